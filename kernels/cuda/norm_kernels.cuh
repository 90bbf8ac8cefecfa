// The batch-norm and layer-norm kernels of nn_norm.cu (device code only: the launches stay
// there). They use the helpers of device.cuh and the CUDA names threadIdx, blockIdx, blockDim,
// gridDim, __syncthreads and __shfl_xor_sync, so tests/gpu/norm_emu.cpp runs the same code on the
// host. Every reduction runs in a fixed order; sums and statistics are double, as on the CPU
// (kernels/cpu/norm.c).
#ifndef VTL_NORM_KERNELS_CUH
#define VTL_NORM_KERNELS_CUH

// ---------------------------------------------------------------- batch norm
// Data elements of type T (float, double, or the f16/bf16 bits below) are read as double (ld)
// and written from double (from_d); the parameters, running statistics and weight gradients have
// type P: T for f32/f64 data, float for half data.
struct bf16_bits { uint16_t v; };
struct f16_bits { uint16_t v; };
__device__ __forceinline__ double ld(float v) { return v; }
__device__ __forceinline__ double ld(double v) { return v; }
__device__ __forceinline__ double ld(bf16_bits v) { return cu_bf16_to_f32(v.v); }
__device__ __forceinline__ double ld(f16_bits v) { return cu_f16_to_f32(v.v); }
template <class T> __device__ __forceinline__ T from_d(double v) { return (T)v; }
template <> __device__ __forceinline__ bf16_bits from_d<bf16_bits>(double v) { return bf16_bits{cu_f32_to_bf16((float)v)}; }
template <> __device__ __forceinline__ f16_bits from_d<f16_bits>(double v) { return f16_bits{cu_f32_to_f16((float)v)}; }
// x (N,C,S): channel c holds M = N*S elements; element j of the channel (j = n*S + s) is at
// (n*C + c)*S + s. (A channels-last input arrives as (N*H*W, C, 1).) Statistics are summed over chunks of a channel (grid (C, chunks)) into
// partials that one thread per channel adds up in order.

__device__ __forceinline__ int64_t bn_at(int64_t j, int64_t c, int64_t C, int64_t S) {
  int64_t n = j / S;
  return (n * C + c) * S + (j - n * S);
}

// partial sums of d = x - K and d^2 over one chunk, K = the channel's first element (a shift
// that keeps the sum of squares free of cancellation)
template <class T> __global__ void bn_partial_stats(const T *x, int64_t C, int64_t S, int64_t M, double *part) {
  __shared__ double sh[32];
  int64_t c = blockIdx.x;
  int k = blockIdx.y, nk = gridDim.y;
  int64_t lo = M * k / nk, hi = M * (k + 1) / nk;
  double K = ld(x[c * S]);
  double s1 = 0, s2 = 0;
  for (int64_t j = lo + threadIdx.x; j < hi; j += blockDim.x) {
    double d = ld(x[bn_at(j, c, C, S)]) - K;
    s1 += d;
    s2 += d * d;
  }
  s1 = cu_block_sum(s1, sh);
  s2 = cu_block_sum(s2, sh);
  if (threadIdx.x == 0) {
    part[2 * (c * nk + k)] = s1;
    part[2 * (c * nk + k) + 1] = s2;
  }
}

// V elements moved as one access (16 bytes when V * sizeof(T) == 16)
template <class T, int V> struct alignas(V * sizeof(T)) vpack {
  T e[V];
};

// What the forward pass does after normalising (kernels/cpu/norm.c's post-operation): add g
// (when add; x's layout) and clamp to [cmin, cmax], in double, rounded once.
struct bn_post {
  bool on, add;
  double cmin, cmax;
  __device__ __forceinline__ double apply(double v, double a) const {
    if (add) v += a;
    return v < cmin ? cmin : v > cmax ? cmax : v; // NaN stays
  }
  // the backward's mask: whether the gradient passes where the clamped output is y (inside
  // (cmin, cmax); relu's unbounded top passes +inf, NaN passes, as the activations' backward)
  __device__ __forceinline__ bool keeps(double y) const { return !(y <= cmin) && !(y >= cmax && cmax < INFINITY); }
};

// The same partials when S = 1 (channels-last inputs, and (N, C) ones): x is (M, C) rows. A
// block covers RW groups of V channels (threadIdx.x; V > 1 reads each group in one 16-byte
// access when C is a multiple of V and the data aligned) and steps through one chunk of rows RH
// at a time (threadIdx.y); each channel's RH row sums are added in a fixed order, the same for
// every V. kind 0: sums of d = x - K and d^2 (K = the channel's first value); kind 1 (g given):
// sums of g and g (x - mean), where with mk.on g is first masked by the forward's output y
// (mk.keeps) and the masked values are written to gm.
constexpr int RW = 32, RH = 8;

template <class T, int V>
__global__ void bn_rows_partial(const T *x, const T *g, int64_t C, int64_t M, const double *mean, double *part,
                                const T *y, T *gm, bn_post mk) {
  __shared__ double sh[2][RH][RW * V];
  int64_t c0 = (blockIdx.x * (int64_t)RW + threadIdx.x) * V;
  int k = blockIdx.y, nk = gridDim.y;
  int64_t lo = M * k / nk, hi = M * (k + 1) / nk;
  double s1[V], s2[V], K[V];
#pragma unroll
  for (int v = 0; v < V; v++) s1[v] = s2[v] = 0;
  if (c0 < C) {
#pragma unroll
    for (int v = 0; v < V; v++) K[v] = g ? mean[c0 + v] : ld(x[c0 + v]);
    for (int64_t j = lo + threadIdx.y; j < hi; j += RH) {
      vpack<T, V> xv = *(const vpack<T, V> *)(x + j * C + c0), gv = xv;
      if (g) gv = *(const vpack<T, V> *)(g + j * C + c0);
      if (g && mk.on) {
        vpack<T, V> yv = *(const vpack<T, V> *)(y + j * C + c0);
#pragma unroll
        for (int v = 0; v < V; v++)
          if (!mk.keeps(ld(yv.e[v]))) gv.e[v] = from_d<T>(0.0);
        *(vpack<T, V> *)(gm + j * C + c0) = gv;
      }
#pragma unroll
      for (int v = 0; v < V; v++) {
        double d = ld(xv.e[v]) - K[v];
        if (g) {
          double gg = ld(gv.e[v]);
          s1[v] += gg;
          s2[v] += gg * d;
        } else {
          s1[v] += d;
          s2[v] += d * d;
        }
      }
    }
  }
#pragma unroll
  for (int v = 0; v < V; v++) {
    sh[0][threadIdx.y][threadIdx.x * V + v] = s1[v];
    sh[1][threadIdx.y][threadIdx.x * V + v] = s2[v];
  }
  __syncthreads();
  if (threadIdx.y == 0 && c0 < C) {
#pragma unroll
    for (int v = 0; v < V; v++) {
      double a = 0, b = 0;
      for (int r = 0; r < RH; r++) {
        a += sh[0][r][threadIdx.x * V + v];
        b += sh[1][r][threadIdx.x * V + v];
      }
      part[2 * ((c0 + v) * nk + k)] = a;
      part[2 * ((c0 + v) * nk + k) + 1] = b;
    }
  }
}

// mean, invstd of each channel from the partials; running statistics updated as the CPU does
template <class T, class P>
__global__ void bn_finish_stats(const T *x, int64_t C, int64_t S, int64_t M, const double *part, int nk, double eps,
                                double momentum, P *rm, int64_t rms, P *rv, int64_t rvs, double *mean, double *invstd) {
  for (int64_t c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; c < C; c += (int64_t)gridDim.x * blockDim.x) {
    double s1 = 0, s2 = 0;
    for (int k = 0; k < nk; k++) {
      s1 += part[2 * (c * nk + k)];
      s2 += part[2 * (c * nk + k) + 1];
    }
    double Md = (double)M, K = ld(x[c * S]);
    double var = (s2 - s1 * s1 / Md) / Md;
    if (var < 0) var = 0;
    double mu = K + s1 / Md;
    mean[c] = mu;
    invstd[c] = 1.0 / sqrt(var + eps);
    if (rm) {
      double om = (double)rm[c * rms], ov = (double)rv[c * rvs];
      rm[c * rms] = (P)((1 - momentum) * om + momentum * mu);
      rv[c * rvs] = (P)((1 - momentum) * ov + momentum * var * Md / (Md - 1));
    }
  }
}

template <class T>
__global__ void bn_eval_stats(int64_t C, const T *rm, int64_t rms, const T *rv, int64_t rvs, double eps, double *mean,
                              double *invstd) {
  for (int64_t c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; c < C; c += (int64_t)gridDim.x * blockDim.x) {
    mean[c] = (double)rm[c * rms];
    invstd[c] = 1.0 / sqrt((double)rv[c * rvs] + eps);
  }
}

// A channel's coefficients (double, as the CPU): forward out = x sc + sh with sc = w invstd,
// sh = b - mean sc; backward dx = k g - q x + d, (k, q, d) from bn_finish_grad when there were
// sums (coef), else k = w invstd and q = d = 0.
struct bn_coefs {
  const double *mean, *invstd, *coef;
  template <class P> __device__ __forceinline__ void fwd(int64_t c, const P *w, const P *b, double *sc, double *sh) const {
    *sc = (w ? (double)w[c] : 1.0) * invstd[c];
    *sh = (b ? (double)b[c] : 0.0) - mean[c] * *sc;
  }
  template <class P> __device__ __forceinline__ void bwd(int64_t c, const P *w, double *k, double *q, double *d) const {
    if (coef) {
      *k = coef[3 * c];
      *q = coef[3 * c + 1];
      *d = coef[3 * c + 2];
    } else {
      *k = (w ? (double)w[c] : 1.0) * invstd[c];
      *q = *d = 0;
    }
  }
};

// The elementwise pass over x (N, C, S) as `outer` lines of `inner` elements: with rows (S = 1:
// channels-last and (N, C) data) a line is one position's C channels, else one (n, c) plane of
// S; V consecutive elements of a line per step (inner a multiple of V, pointers aligned), so
// the channel costs one division per V elements instead of two per element. GRAD: dx from g
// and x, else out from x and, with post.on, its post-operation (g: the added tensor).
template <class T, class P, int V, bool GRAD>
__global__ void bn_lines(const T *x, const T *g, T *out, int64_t outer, int64_t inner, int64_t C, bool rows,
                         bn_coefs cf, const P *w, const P *b, bn_post post) {
  int64_t groups = inner / V, total = outer * groups;
  for (int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; t < total; t += (int64_t)gridDim.x * blockDim.x) {
    int64_t o = t / groups, gi = t - o * groups, base = o * inner + gi * V;
    int64_t c0 = rows ? gi * V : o % C;
    vpack<T, V> xv = *(const vpack<T, V> *)(x + base), r;
    if (GRAD) {
      vpack<T, V> gv = *(const vpack<T, V> *)(g + base);
      double k, q, d;
      if (!rows) cf.bwd(c0, w, &k, &q, &d);
#pragma unroll
      for (int v = 0; v < V; v++) {
        if (rows) cf.bwd(c0 + v, w, &k, &q, &d);
        // eval mode has q = 0: x is not read, so an infinite x does not make 0 * inf
        r.e[v] = from_d<T>(k * ld(gv.e[v]) - (q != 0 ? q * ld(xv.e[v]) : 0.0) + d);
      }
    } else {
      double sc, sh;
      if (!rows) cf.fwd(c0, w, b, &sc, &sh);
      vpack<T, V> av = xv;
      if (post.add) av = *(const vpack<T, V> *)(g + base);
#pragma unroll
      for (int v = 0; v < V; v++) {
        if (rows) cf.fwd(c0 + v, w, b, &sc, &sh);
        double y = ld(xv.e[v]) * sc + sh;
        r.e[v] = from_d<T>(post.on ? post.apply(y, post.add ? ld(av.e[v]) : 0.0) : y);
      }
    }
    *(vpack<T, V> *)(out + base) = r;
  }
}

// partial sums of g and g (x - mean) over one chunk of a channel; with mk.on, g masked by the
// forward's output y first and written to gm (as bn_rows_partial)
template <class T>
__global__ void bn_partial_grad(const T *g, const T *x, int64_t C, int64_t S, int64_t M, const double *mean,
                                double *part, const T *y, T *gm, bn_post mk) {
  __shared__ double sh[32];
  int64_t c = blockIdx.x;
  int k = blockIdx.y, nk = gridDim.y;
  int64_t lo = M * k / nk, hi = M * (k + 1) / nk;
  double mu = mean[c], a = 0, p = 0;
  for (int64_t j = lo + threadIdx.x; j < hi; j += blockDim.x) {
    int64_t i = bn_at(j, c, C, S);
    double gv = ld(g[i]);
    if (mk.on) {
      if (!mk.keeps(ld(y[i]))) gv = 0;
      gm[i] = from_d<T>(gv);
    }
    a += gv;
    p += gv * (ld(x[i]) - mu);
  }
  a = cu_block_sum(a, sh);
  p = cu_block_sum(p, sh);
  if (threadIdx.x == 0) {
    part[2 * (c * nk + k)] = a;
    part[2 * (c * nk + k) + 1] = p;
  }
}

// gw = sgx invstd, gb = sg; coef (C, 3): k, q, d of dx = k g - q x + d
template <class P>
__global__ void bn_finish_grad(int64_t C, int64_t M, const double *part, int nk, const double *mean,
                               const double *invstd, const P *w, bool training, P *gw, P *gb, double *coef) {
  for (int64_t c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; c < C; c += (int64_t)gridDim.x * blockDim.x) {
    double sg = 0, sgx = 0;
    for (int k = 0; k < nk; k++) {
      sg += part[2 * (c * nk + k)];
      sgx += part[2 * (c * nk + k) + 1];
    }
    if (gw) gw[c] = (P)(sgx * invstd[c]);
    if (gb) gb[c] = (P)sg;
    double kk = (w ? (double)w[c] : 1.0) * invstd[c], q = 0, d = 0;
    if (training) {
      q = kk * invstd[c] * invstd[c] * sgx / (double)M;
      d = q * mean[c] - kk * sg / (double)M;
    }
    coef[3 * c] = kk;
    coef[3 * c + 1] = q;
    coef[3 * c + 2] = d;
  }
}

// ---------------------------------------------------------------- layer norm
// x (M, D): one block per row for the statistics and dx; the weight and bias gradients are
// column sums over row chunks (grid (column blocks, chunks)) added up in order.

// mean and 1/sqrt(biased variance + eps) of D contiguous elements, two passes in double (the
// CPU's row_stats), every thread of the block gets them
template <class T>
__device__ __forceinline__ void block_row_stats(const T *xr, int64_t D, double eps, double *sh, double *mu_out,
                                                double *rs_out) {
  double s = 0;
  for (int64_t j = threadIdx.x; j < D; j += blockDim.x) s += (double)xr[j];
  s = cu_block_sum(s, sh);
  double mu = D ? s / (double)D : 0, q = 0;
  for (int64_t j = threadIdx.x; j < D; j += blockDim.x) {
    double d = (double)xr[j] - mu;
    q += d * d;
  }
  q = cu_block_sum(q, sh);
  *mu_out = mu;
  *rs_out = 1.0 / sqrt((D ? q / (double)D : 0) + eps);
}

template <class T>
__global__ void ln_forward(const T *x, T *out, int64_t M, int64_t D, const T *w, const T *b, double eps, double *mean,
                           double *rstd) {
  __shared__ double sh[32];
  for (int64_t r = blockIdx.x; r < M; r += gridDim.x) {
    const T *xr = x + r * D;
    T *yr = out + r * D;
    double mu, rs;
    block_row_stats(xr, D, eps, sh, &mu, &rs);
    if (threadIdx.x == 0) {
      mean[r] = mu;
      rstd[r] = rs;
    }
    T m = (T)mu, rr = (T)rs;
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x) {
      T v = (xr[j] - m) * rr;
      if (w) v = v * w[j];
      if (b) v = v + b[j];
      yr[j] = v;
    }
  }
}

// dx = rstd (h - mean(h) - xhat mean(h xhat)), h = g w, xhat = (x - mean) rstd
template <class T>
__global__ void ln_backward_dx(const T *g, const T *x, int64_t M, int64_t D, const T *w, const double *mean,
                               const double *rstd, T *dx) {
  __shared__ double sh[32];
  for (int64_t r = blockIdx.x; r < M; r += gridDim.x) {
    const T *gr = g + r * D, *xr = x + r * D;
    T *dr = dx + r * D;
    T m = (T)mean[r], rr = (T)rstd[r];
    double s1 = 0, s2 = 0;
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x) {
      T h = w ? gr[j] * w[j] : gr[j];
      s1 += (double)h;
      s2 += (double)(h * (xr[j] - m));
    }
    s1 = cu_block_sum(s1, sh);
    s2 = cu_block_sum(s2, sh);
    T a = (T)(s1 / (double)D), c = (T)(s2 * rstd[r] / (double)D);
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x) {
      T h = w ? gr[j] * w[j] : gr[j], xh = (xr[j] - m) * rr;
      dr[j] = rr * (h - a - xh * c);
    }
  }
}

// partials (chunk k, column j): sum over the chunk's rows of g xhat and of g
template <class T>
__global__ void ln_partial_wb(const T *g, const T *x, int64_t M, int64_t D, const double *mean, const double *rstd,
                              double *part) {
  int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  int k = blockIdx.y, nk = gridDim.y;
  if (j >= D) return;
  int64_t lo = M * k / nk, hi = M * (k + 1) / nk;
  double aw = 0, ab = 0;
  for (int64_t r = lo; r < hi; r++) {
    T gv = g[r * D + j], m = (T)mean[r], rr = (T)rstd[r];
    aw += (double)(gv * ((x[r * D + j] - m) * rr));
    ab += (double)gv;
  }
  part[2 * (k * D + j)] = aw;
  part[2 * (k * D + j) + 1] = ab;
}

template <class T> __global__ void ln_finish_wb(int64_t D, const double *part, int nk, T *gw, T *gb) {
  for (int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; j < D; j += (int64_t)gridDim.x * blockDim.x) {
    double sw = 0, sb = 0;
    for (int k = 0; k < nk; k++) {
      sw += part[2 * (k * D + j)];
      sb += part[2 * (k * D + j) + 1];
    }
    if (gw) gw[j] = (T)sw;
    if (gb) gb[j] = (T)sb;
  }
}

// Rows of up to 32 * VPT elements (a transformer's widths): one warp per row, the row held in
// registers (lane l has elements l, l + 32, ...), the sums in double as above, so the data is
// read from memory once per pass instead of three times by a block with two block-wide sums.
constexpr int LN_WARPS = 8;          // rows per block
constexpr int64_t LN_WARP_MAX = 1024; // widest row the warp kernels take (VPT 32)

template <class T, int VPT>
__global__ void ln_forward_warp(const T *x, T *out, int64_t M, int64_t D, const T *w, const T *b, double eps,
                                double *mean, double *rstd) {
  int lane = threadIdx.x & 31;
  int64_t r = blockIdx.x * (int64_t)LN_WARPS + (threadIdx.x >> 5);
  if (r >= M) return;
  const T *xr = x + r * D;
  T v[VPT];
  double s = 0;
#pragma unroll
  for (int i = 0; i < VPT; i++) {
    int64_t j = lane + 32 * i;
    v[i] = j < D ? xr[j] : (T)0;
    s += (double)v[i];
  }
  double mu = cu_warp_sum(s) / (double)D, q = 0;
#pragma unroll
  for (int i = 0; i < VPT; i++) {
    double d = (double)v[i] - mu;
    if (lane + 32 * i < D) q += d * d;
  }
  double rs = 1.0 / sqrt(cu_warp_sum(q) / (double)D + eps);
  if (lane == 0) {
    mean[r] = mu;
    rstd[r] = rs;
  }
  T m = (T)mu, rr = (T)rs;
  T *yr = out + r * D;
#pragma unroll
  for (int i = 0; i < VPT; i++) {
    int64_t j = lane + 32 * i;
    if (j < D) {
      T o = (v[i] - m) * rr;
      if (w) o = o * w[j];
      if (b) o = o + b[j];
      yr[j] = o;
    }
  }
}

template <class T, int VPT>
__global__ void ln_backward_dx_warp(const T *g, const T *x, int64_t M, int64_t D, const T *w, const double *mean,
                                    const double *rstd, T *dx) {
  int lane = threadIdx.x & 31;
  int64_t r = blockIdx.x * (int64_t)LN_WARPS + (threadIdx.x >> 5);
  if (r >= M) return;
  const T *gr = g + r * D, *xr = x + r * D;
  T m = (T)mean[r], rr = (T)rstd[r];
  T h[VPT], xc[VPT];
  double s1 = 0, s2 = 0;
#pragma unroll
  for (int i = 0; i < VPT; i++) {
    int64_t j = lane + 32 * i;
    h[i] = j < D ? (w ? gr[j] * w[j] : gr[j]) : (T)0;
    xc[i] = j < D ? xr[j] - m : (T)0;
    s1 += (double)h[i];
    s2 += (double)(h[i] * xc[i]);
  }
  s1 = cu_warp_sum(s1);
  s2 = cu_warp_sum(s2);
  T a = (T)(s1 / (double)D), c = (T)(s2 * rstd[r] / (double)D);
  T *dr = dx + r * D;
#pragma unroll
  for (int i = 0; i < VPT; i++) {
    int64_t j = lane + 32 * i;
    if (j < D) dr[j] = rr * (h[i] - a - xc[i] * rr * c);
  }
}

#endif
