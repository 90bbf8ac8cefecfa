// CUDA 2-D pooling over (P,H,W) planes: max, average, adaptive average and adaptive max, forward
// and backward. Windows follow kernels/cpu/pool.c exactly (taps in row-major order, the first
// maximum wins ties, NaN wins a max, the same average divisors). The backward passes gather
// instead of scattering: each input element sums the gradients of the outputs that read it, in
// increasing output order, which is the order the CPU adds them in -- so no atomics, and the
// same sums on both devices.
#include "nn.cuh"

namespace {

struct pool_geom {
  int64_t P, H, W, OH, OW, kh, kw, sh, sw, ph, pw, dh, dw, divisor_override;
  bool count_include_pad;
};

pool_geom geom_of(const vtl_pool2d_shape *s) {
  return {s->P, s->H, s->W, s->OH, s->OW, s->kernel[0], s->kernel[1], s->stride[0], s->stride[1], s->pad[0],
          s->pad[1], s->dilation[0], s->dilation[1], s->divisor_override, s->count_include_pad};
}

__device__ __forceinline__ int64_t ad_start(int64_t i, int64_t n, int64_t L) { return i * L / n; }
__device__ __forceinline__ int64_t ad_end(int64_t i, int64_t n, int64_t L) { return ((i + 1) * L + n - 1) / n; }

// max pooling window of output (oh, ow); idx is the first in-range tap when nothing beats -inf
template <class T> __global__ void max_pool_fwd(pool_geom g, const T *x, T *y, int64_t *idx, bool adaptive) {
  int64_t total = g.P * g.OH * g.OW;
  for (int64_t o = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; o < total; o += (int64_t)gridDim.x * blockDim.x) {
    int64_t ow = o % g.OW, oh = (o / g.OW) % g.OH, p = o / (g.OW * g.OH);
    const T *xp = x + p * g.H * g.W;
    T m = -INFINITY;
    int64_t mi = -1;
    if (adaptive) {
      int64_t h0 = ad_start(oh, g.OH, g.H), h1 = ad_end(oh, g.OH, g.H);
      int64_t w0 = ad_start(ow, g.OW, g.W), w1 = ad_end(ow, g.OW, g.W);
      mi = h0 * g.W + w0;
      for (int64_t h = h0; h < h1; h++)
        for (int64_t w = w0; w < w1; w++) {
          T v = xp[h * g.W + w];
          if (v > m || v != v) { m = v; mi = h * g.W + w; }
        }
    } else {
      for (int64_t i = 0; i < g.kh; i++) {
        int64_t h = oh * g.sh - g.ph + i * g.dh;
        if (h < 0 || h >= g.H) continue;
        for (int64_t j = 0; j < g.kw; j++) {
          int64_t w = ow * g.sw - g.pw + j * g.dw;
          if (w < 0 || w >= g.W) continue;
          T v = xp[h * g.W + w];
          if (mi < 0) mi = h * g.W + w;
          if (v > m || v != v) { m = v; mi = h * g.W + w; }
        }
      }
    }
    y[o] = m;
    if (idx) idx[o] = mi;
  }
}

// the average window of output (oh, ow) clipped to the plane, and its divisor (pool.c's avg_win)
struct avg_window { int64_t h0, h1, w0, w1; double div; };
__device__ __forceinline__ avg_window avg_win(const pool_geom &g, int64_t oh, int64_t ow) {
  avg_window a;
  int64_t h0 = oh * g.sh - g.ph, w0 = ow * g.sw - g.pw, h1 = h0 + g.kh, w1 = w0 + g.kw;
  if (h1 > g.H + g.ph) h1 = g.H + g.ph;
  if (w1 > g.W + g.pw) w1 = g.W + g.pw;
  int64_t padded = (h1 - h0) * (w1 - w0);
  if (h0 < 0) h0 = 0;
  if (w0 < 0) w0 = 0;
  if (h1 > g.H) h1 = g.H;
  if (w1 > g.W) w1 = g.W;
  a.h0 = h0; a.h1 = h1; a.w0 = w0; a.w1 = w1;
  a.div = g.divisor_override ? (double)g.divisor_override : g.count_include_pad ? (double)padded
                                                                               : (double)((h1 - h0) * (w1 - w0));
  return a;
}

template <class T> __global__ void avg_pool_fwd(pool_geom g, const T *x, T *y) {
  int64_t total = g.P * g.OH * g.OW;
  for (int64_t o = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; o < total; o += (int64_t)gridDim.x * blockDim.x) {
    int64_t ow = o % g.OW, oh = (o / g.OW) % g.OH, p = o / (g.OW * g.OH);
    const T *xp = x + p * g.H * g.W;
    avg_window a = avg_win(g, oh, ow);
    T sum = 0;
    for (int64_t h = a.h0; h < a.h1; h++)
      for (int64_t w = a.w0; w < a.w1; w++) sum += xp[h * g.W + w];
    y[o] = a.h0 < a.h1 && a.w0 < a.w1 ? (T)(sum / a.div) : (T)0;
  }
}

// one block per plane for global pooling (OH = OW = 1); other sizes one thread per output
template <class T> __global__ void adaptive_avg_fwd(pool_geom g, const T *x, T *y) {
  int64_t total = g.P * g.OH * g.OW;
  for (int64_t o = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; o < total; o += (int64_t)gridDim.x * blockDim.x) {
    int64_t ow = o % g.OW, oh = (o / g.OW) % g.OH, p = o / (g.OW * g.OH);
    const T *xp = x + p * g.H * g.W;
    int64_t h0 = ad_start(oh, g.OH, g.H), h1 = ad_end(oh, g.OH, g.H);
    int64_t w0 = ad_start(ow, g.OW, g.W), w1 = ad_end(ow, g.OW, g.W);
    T sum = 0;
    for (int64_t h = h0; h < h1; h++)
      for (int64_t w = w0; w < w1; w++) sum += xp[h * g.W + w];
    y[o] = (T)(sum / (T)((h1 - h0) * (w1 - w0)));
  }
}

template <class T> __global__ void global_avg_fwd(int64_t P, int64_t n, const T *x, T *y) {
  __shared__ double sh[32];
  for (int64_t p = blockIdx.x; p < P; p += gridDim.x) {
    const T *xp = x + p * n;
    double s = 0;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += (double)xp[i];
    s = cu_block_sum(s, sh);
    if (threadIdx.x == 0) y[p] = (T)((T)s / (T)n);
  }
}

// gx[p, h, w] = sum of gy[p, o] over the outputs o whose recorded maximum is (h, w). With the
// window known (max_pool2d), only the outputs whose window can reach (h, w) are looked at.
template <class T> __global__ void max_pool_bwd(pool_geom g, const T *gy, const int64_t *idx, T *gx, int mode) {
  int64_t total = g.P * g.H * g.W;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    int64_t w = i % g.W, h = (i / g.W) % g.H, p = i / (g.W * g.H), pos = h * g.W + w;
    int64_t oh0 = 0, oh1 = g.OH, ow0 = 0, ow1 = g.OW;
    if (mode == 0) { // max_pool2d: oh*sh - ph <= h <= oh*sh - ph + (kh-1)*dh
      int64_t a = h + g.ph - (g.kh - 1) * g.dh, b = w + g.pw - (g.kw - 1) * g.dw;
      oh0 = a <= 0 ? 0 : (a + g.sh - 1) / g.sh;
      ow0 = b <= 0 ? 0 : (b + g.sw - 1) / g.sw;
      oh1 = min(g.OH, (h + g.ph) / g.sh + 1);
      ow1 = min(g.OW, (w + g.pw) / g.sw + 1);
    } else if (mode == 1) { // adaptive: [floor(h*OH/H), ceil((h+1)*OH/H))
      oh0 = h * g.OH / g.H;
      oh1 = min(g.OH, ((h + 1) * g.OH + g.H - 1) / g.H);
      ow0 = w * g.OW / g.W;
      ow1 = min(g.OW, ((w + 1) * g.OW + g.W - 1) / g.W);
    }
    const T *gp = gy + p * g.OH * g.OW;
    const int64_t *ip = idx + p * g.OH * g.OW;
    T acc = 0;
    for (int64_t oh = oh0; oh < oh1; oh++)
      for (int64_t ow = ow0; ow < ow1; ow++)
        if (ip[oh * g.OW + ow] == pos) acc += gp[oh * g.OW + ow];
    gx[i] = acc;
  }
}

template <class T> __global__ void avg_pool_bwd(pool_geom g, const T *gy, T *gx) {
  int64_t total = g.P * g.H * g.W;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    int64_t w = i % g.W, h = (i / g.W) % g.H, p = i / (g.W * g.H);
    // outputs with oh*sh - ph <= h < oh*sh - ph + kh
    int64_t a = h + g.ph - g.kh + 1, b = w + g.pw - g.kw + 1;
    int64_t oh0 = a <= 0 ? 0 : (a + g.sh - 1) / g.sh, ow0 = b <= 0 ? 0 : (b + g.sw - 1) / g.sw;
    int64_t oh1 = min(g.OH, (h + g.ph) / g.sh + 1), ow1 = min(g.OW, (w + g.pw) / g.sw + 1);
    const T *gp = gy + p * g.OH * g.OW;
    T acc = 0;
    for (int64_t oh = oh0; oh < oh1; oh++)
      for (int64_t ow = ow0; ow < ow1; ow++) {
        avg_window aw = avg_win(g, oh, ow);
        if (h < aw.h0 || h >= aw.h1 || w < aw.w0 || w >= aw.w1) continue;
        acc += (T)(gp[oh * g.OW + ow] / aw.div);
      }
    gx[i] = acc;
  }
}

template <class T> __global__ void adaptive_avg_bwd(pool_geom g, const T *gy, T *gx) {
  int64_t total = g.P * g.H * g.W;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    int64_t w = i % g.W, h = (i / g.W) % g.H, p = i / (g.W * g.H);
    int64_t oh0 = h * g.OH / g.H, oh1 = min(g.OH, ((h + 1) * g.OH + g.H - 1) / g.H);
    int64_t ow0 = w * g.OW / g.W, ow1 = min(g.OW, ((w + 1) * g.OW + g.W - 1) / g.W);
    const T *gp = gy + p * g.OH * g.OW;
    T acc = 0;
    for (int64_t oh = oh0; oh < oh1; oh++) {
      int64_t h0 = ad_start(oh, g.OH, g.H), h1 = ad_end(oh, g.OH, g.H);
      if (h < h0 || h >= h1) continue;
      for (int64_t ow = ow0; ow < ow1; ow++) {
        int64_t w0 = ad_start(ow, g.OW, g.W), w1 = ad_end(ow, g.OW, g.W);
        if (w < w0 || w >= w1) continue;
        acc += gp[oh * g.OW + ow] / (T)((h1 - h0) * (w1 - w0));
      }
    }
    gx[i] = acc;
  }
}

template <class T>
vtl_status pool_fwd_t(vtl_pool_kind kind, const pool_geom &g, const T *x, T *y, int64_t *idx, cudaStream_t st) {
  int64_t n = g.P * g.OH * g.OW;
  switch (kind) {
  case VTL_POOL_MAX: max_pool_fwd<T><<<vtl_cu_blocks(n), 256, 0, st>>>(g, x, y, idx, false); break;
  case VTL_POOL_ADAPTIVE_MAX: max_pool_fwd<T><<<vtl_cu_blocks(n), 256, 0, st>>>(g, x, y, idx, true); break;
  case VTL_POOL_AVG: avg_pool_fwd<T><<<vtl_cu_blocks(n), 256, 0, st>>>(g, x, y); break;
  case VTL_POOL_ADAPTIVE_AVG:
    if (g.OH == 1 && g.OW == 1)
      global_avg_fwd<T><<<(unsigned)(g.P < 65536 ? g.P : 65536), 256, 0, st>>>(g.P, g.H * g.W, x, y);
    else adaptive_avg_fwd<T><<<vtl_cu_blocks(n), 256, 0, st>>>(g, x, y);
    break;
  }
  VTL_CU_LAUNCHED("pool2d");
  return VTL_OK;
}

template <class T>
vtl_status pool_bwd_t(vtl_pool_kind kind, const pool_geom &g, const T *gy, const int64_t *idx, T *gx, cudaStream_t st) {
  int64_t n = g.P * g.H * g.W;
  switch (kind) {
  case VTL_POOL_MAX: // kernel size 0: the window is unknown (a direct call from Lua): every output is looked at
    max_pool_bwd<T><<<vtl_cu_blocks(n), 256, 0, st>>>(g, gy, idx, gx, g.kh > 0 ? 0 : 2);
    break;
  case VTL_POOL_ADAPTIVE_MAX: max_pool_bwd<T><<<vtl_cu_blocks(n), 256, 0, st>>>(g, gy, idx, gx, 1); break;
  case VTL_POOL_AVG: avg_pool_bwd<T><<<vtl_cu_blocks(n), 256, 0, st>>>(g, gy, gx); break;
  case VTL_POOL_ADAPTIVE_AVG: adaptive_avg_bwd<T><<<vtl_cu_blocks(n), 256, 0, st>>>(g, gy, gx); break;
  }
  VTL_CU_LAUNCHED("pool2d_backward");
  return VTL_OK;
}

} // namespace

vtl_status vtl_cu_pool2d_forward(vtl_pool_kind kind, const vtl_pool2d_shape *s, const vtl_tensor *x, vtl_tensor *y,
                                 vtl_tensor *idx) {
  pool_geom g = geom_of(s);
  if (g.P * g.OH * g.OW == 0) return VTL_OK;
  cudaStream_t st = vtl_cu_stream(vtl_cu_device(x));
  if (!st) return vtl_error_status();
  if (s->dtype == VTL_F32) return pool_fwd_t(kind, g, cu_ptr<float>(x), cu_ptr<float>(y), cu_ptr<int64_t>(idx), st);
  return pool_fwd_t(kind, g, cu_ptr<double>(x), cu_ptr<double>(y), cu_ptr<int64_t>(idx), st);
}

vtl_status vtl_cu_pool2d_backward(vtl_pool_kind kind, const vtl_pool2d_shape *s, const vtl_tensor *gy,
                                  const vtl_tensor *idx, vtl_tensor *gx) {
  pool_geom g = geom_of(s);
  if (g.P * g.H * g.W == 0) return VTL_OK;
  cudaStream_t st = vtl_cu_stream(vtl_cu_device(gy));
  if (!st) return vtl_error_status();
  if (g.OH * g.OW == 0) { // nothing flows back
    cudaError_t e = cudaMemsetAsync(vtl_tensor_data(gx), 0, (size_t)(g.P * g.H * g.W) * vtl_dtype_size(s->dtype), st);
    return e == cudaSuccess ? VTL_OK : vtl_cu_error(e, "pool2d_backward");
  }
  if (s->dtype == VTL_F32) return pool_bwd_t(kind, g, cu_ptr<float>(gy), cu_ptr<int64_t>(idx), cu_ptr<float>(gx), st);
  return pool_bwd_t(kind, g, cu_ptr<double>(gy), cu_ptr<int64_t>(idx), cu_ptr<double>(gx), st);
}
