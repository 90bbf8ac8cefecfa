// CUDA activations (forward, backward) and dropout, and the CUDA backend's nn table.
// Activations compute in the data's own type, as the CPU kernels of kernels/cpu/activation.c
// do, with the same derivative conventions at the kinks; dropout draws its keep mask from the
// same Philox4x32-10 words as the CPU (element i: word i % 4 of block offset + i / 4), so a
// seeded dropout gives the same mask and the same values on both devices.
#include "nn.cuh"
#include "cpu/philox.h"

namespace {

constexpr double SQRT_2_OVER_PI = 0.7978845608028654, INV_SQRT_2PI = 0.3989422804014327, GELU_K = 0.044715;
constexpr double SQRT1_2 = 0.70710678118654752440;

template <class T> __device__ __forceinline__ T clamp06(T v) { return v < 0 ? (T)0 : v > 6 ? (T)6 : v; }

template <class T> __device__ __forceinline__ T act_fwd(int act, T v, T p0, T p1) {
  switch (act) {
  case VTL_ACT_RELU: return v < 0 ? (T)0 : v;
  case VTL_ACT_RELU6: return clamp06(v);
  case VTL_ACT_LEAKY_RELU: return v > 0 ? v : v * p0;
  case VTL_ACT_GELU: return (T)0.5 * v * (1 + cu_erf(v * (T)SQRT1_2));
  case VTL_ACT_GELU_TANH: return (T)0.5 * v * (1 + cu_tanh((T)SQRT_2_OVER_PI * (v + (T)GELU_K * v * v * v)));
  case VTL_ACT_SILU: return v / (1 + cu_exp(-v));
  case VTL_ACT_HARDSWISH: return v * clamp06(v + 3) / 6;
  case VTL_ACT_HARDSIGMOID: return clamp06(v + 3) / 6;
  case VTL_ACT_SOFTPLUS: return v * p0 > p1 ? v : cu_log1p(cu_exp(v * p0)) / p0;
  case VTL_ACT_ELU: return v > 0 ? v : p0 * cu_expm1(v);
  case VTL_ACT_SIGMOID: return 1 / (1 + cu_exp(-v));
  case VTL_ACT_TANH: return cu_tanh(v);
  default: return v;
  }
}

// v: the saved input or output (vtl_activation_uses_output), gv: the upstream gradient
template <class T> __device__ __forceinline__ T act_bwd(int act, T v, T gv, T p0, T p1) {
  switch (act) {
  case VTL_ACT_RELU: return v <= 0 ? (T)0 : gv;
  case VTL_ACT_RELU6: return v <= 0 || v >= 6 ? (T)0 : gv;
  case VTL_ACT_LEAKY_RELU: return v > 0 ? gv : gv * p0;
  case VTL_ACT_GELU:
    return gv * ((T)0.5 * (1 + cu_erf(v * (T)SQRT1_2)) + v * (T)INV_SQRT_2PI * cu_exp((T)-0.5 * v * v));
  case VTL_ACT_GELU_TANH: {
    T t = cu_tanh((T)SQRT_2_OVER_PI * (v + (T)GELU_K * v * v * v));
    return gv * ((T)0.5 * (1 + t) + (T)0.5 * v * (1 - t * t) * (T)SQRT_2_OVER_PI * (1 + (T)(3 * GELU_K) * v * v));
  }
  case VTL_ACT_SILU: {
    T sg = 1 / (1 + cu_exp(-v));
    return gv * sg * (1 + v * (1 - sg));
  }
  case VTL_ACT_HARDSWISH: return v < -3 ? (T)0 : v < 3 ? gv * (v / 3 + (T)0.5) : gv;
  case VTL_ACT_HARDSIGMOID: return v > -3 && v < 3 ? gv / 6 : (T)0;
  case VTL_ACT_SOFTPLUS: return v * p0 > p1 ? gv : gv * (1 - 1 / (1 + cu_exp(v * p0)));
  case VTL_ACT_ELU: return v > 0 ? gv : gv * (v + p0);
  case VTL_ACT_SIGMOID: return gv * v * (1 - v);
  case VTL_ACT_TANH: return gv * (1 - v * v);
  default: return gv;
  }
}

// y = act(x), n elements
template <class T> __global__ void act_forward_kernel(int act, const T *x, T *y, int64_t n, T p0, T p1) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    y[i] = act_fwd(act, x[i], p0, p1);
}

// dx = g * act'(s), n elements
template <class T> __global__ void act_backward_kernel(int act, const T *g, const T *s, T *dx, int64_t n, T p0, T p1) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    dx[i] = act_bwd(act, s[i], g[i], p0, p1);
}

// f16 / bf16 data (BF: bf16) computed in f32 and rounded once, as the CPU does
template <bool BF> __device__ __forceinline__ float h_load(uint16_t b) { return BF ? cu_bf16_to_f32(b) : cu_f16_to_f32(b); }
template <bool BF> __device__ __forceinline__ uint16_t h_store(float v) { return BF ? cu_f32_to_bf16(v) : cu_f32_to_f16(v); }

// Half data moves 8 elements (16 bytes) per access when every pointer is 16-byte aligned; the
// elements past the last whole group, or all of them otherwise, one at a time.
constexpr int HV = 8;
union h8 {
  uint4 v;
  uint16_t e[HV];
};

__device__ __forceinline__ bool aligned16(const void *a, const void *b, const void *c) {
  return (((uintptr_t)a | (uintptr_t)b | (uintptr_t)c) & 15) == 0;
}

template <bool BF>
__global__ void act_forward_half(int act, const uint16_t *x, uint16_t *y, int64_t n, float p0, float p1) {
  int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x, step = (int64_t)gridDim.x * blockDim.x;
  int64_t groups = aligned16(x, y, y) ? n / HV : 0;
  for (int64_t i = t; i < groups; i += step) {
    h8 a, o;
    a.v = ((const uint4 *)x)[i];
#pragma unroll
    for (int k = 0; k < HV; k++) o.e[k] = h_store<BF>(act_fwd(act, h_load<BF>(a.e[k]), p0, p1));
    ((uint4 *)y)[i] = o.v;
  }
  for (int64_t i = groups * HV + t; i < n; i += step) y[i] = h_store<BF>(act_fwd(act, h_load<BF>(x[i]), p0, p1));
}

template <bool BF>
__global__ void act_backward_half(int act, const uint16_t *g, const uint16_t *s, uint16_t *dx, int64_t n, float p0,
                                  float p1) {
  int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x, step = (int64_t)gridDim.x * blockDim.x;
  int64_t groups = aligned16(g, s, dx) ? n / HV : 0;
  for (int64_t i = t; i < groups; i += step) {
    h8 a, b, o;
    a.v = ((const uint4 *)g)[i];
    b.v = ((const uint4 *)s)[i];
#pragma unroll
    for (int k = 0; k < HV; k++) o.e[k] = h_store<BF>(act_bwd(act, h_load<BF>(b.e[k]), h_load<BF>(a.e[k]), p0, p1));
    ((uint4 *)dx)[i] = o.v;
  }
  for (int64_t i = groups * HV + t; i < n; i += step)
    dx[i] = h_store<BF>(act_bwd(act, h_load<BF>(s[i]), h_load<BF>(g[i]), p0, p1));
}

vtl_status cu_activation_forward(vtl_activation act, const vtl_tensor *x, vtl_tensor *y, const double *p) {
  int64_t n = vtl_tensor_numel(x);
  if (n == 0) return VTL_OK;
  cudaStream_t st = vtl_cu_stream(vtl_cu_device(x));
  if (!st) return vtl_error_status();
  if (x->dtype == VTL_BF16 || x->dtype == VTL_F16) {
    if (x->dtype == VTL_BF16)
      act_forward_half<true><<<vtl_cu_blocks((n + HV - 1) / HV), 256, 0, st>>>(act, cu_ptr<uint16_t>(x), cu_ptr<uint16_t>(y), n,
                                                               (float)p[0], (float)p[1]);
    else
      act_forward_half<false><<<vtl_cu_blocks((n + HV - 1) / HV), 256, 0, st>>>(act, cu_ptr<uint16_t>(x), cu_ptr<uint16_t>(y), n,
                                                                (float)p[0], (float)p[1]);
    VTL_CU_LAUNCHED("activation");
    return VTL_OK;
  }
  if (x->dtype == VTL_F32)
    act_forward_kernel<float><<<vtl_cu_blocks(n), 256, 0, st>>>(act, cu_ptr<float>(x), cu_ptr<float>(y), n,
                                                                (float)p[0], (float)p[1]);
  else
    act_forward_kernel<double><<<vtl_cu_blocks(n), 256, 0, st>>>(act, cu_ptr<double>(x), cu_ptr<double>(y), n, p[0],
                                                                 p[1]);
  VTL_CU_LAUNCHED("activation");
  return VTL_OK;
}

vtl_status cu_activation_backward(vtl_activation act, const vtl_tensor *g, const vtl_tensor *s, vtl_tensor *dx,
                                  const double *p) {
  int64_t n = vtl_tensor_numel(s);
  if (n == 0) return VTL_OK;
  cudaStream_t st = vtl_cu_stream(vtl_cu_device(s));
  if (!st) return vtl_error_status();
  if (s->dtype == VTL_BF16 || s->dtype == VTL_F16) {
    if (s->dtype == VTL_BF16)
      act_backward_half<true><<<vtl_cu_blocks((n + HV - 1) / HV), 256, 0, st>>>(act, cu_ptr<uint16_t>(g), cu_ptr<uint16_t>(s),
                                                                cu_ptr<uint16_t>(dx), n, (float)p[0], (float)p[1]);
    else
      act_backward_half<false><<<vtl_cu_blocks((n + HV - 1) / HV), 256, 0, st>>>(act, cu_ptr<uint16_t>(g), cu_ptr<uint16_t>(s),
                                                                 cu_ptr<uint16_t>(dx), n, (float)p[0], (float)p[1]);
    VTL_CU_LAUNCHED("activation_backward");
    return VTL_OK;
  }
  if (s->dtype == VTL_F32)
    act_backward_kernel<float><<<vtl_cu_blocks(n), 256, 0, st>>>(act, cu_ptr<float>(g), cu_ptr<float>(s),
                                                                 cu_ptr<float>(dx), n, (float)p[0], (float)p[1]);
  else
    act_backward_kernel<double><<<vtl_cu_blocks(n), 256, 0, st>>>(act, cu_ptr<double>(g), cu_ptr<double>(s),
                                                                  cu_ptr<double>(dx), n, p[0], p[1]);
  VTL_CU_LAUNCHED("activation_backward");
  return VTL_OK;
}

// blocks of 4 elements: mask[i] = 24-bit word < thr; out = x * scale (in double, as the CPU)
template <class T>
__global__ void dropout_forward_kernel(const T *x, T *out, uint8_t *mask, int64_t n, uint32_t thr, double scale,
                                       uint64_t seed, uint64_t offset) {
  int64_t nb = (n + 3) / 4;
  for (int64_t b = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; b < nb; b += (int64_t)gridDim.x * blockDim.x) {
    uint32_t r[4];
    vtl_philox4x32(offset + (uint64_t)b, seed, r);
    for (int j = 0; j < 4 && 4 * b + j < n; j++) {
      int64_t i = 4 * b + j;
      uint8_t k = (r[j] >> 8) < thr;
      mask[i] = k;
      out[i] = k ? (T)((double)x[i] * scale) : (T)0;
    }
  }
}

template <class T> __global__ void dropout_backward_kernel(const T *g, const uint8_t *mask, T *dx, int64_t n, double scale) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    dx[i] = mask[i] ? (T)((double)g[i] * scale) : (T)0;
}

vtl_status cu_dropout_forward(const vtl_tensor *x, vtl_tensor *out, vtl_tensor *mask, double p, uint64_t seed,
                              uint64_t offset) {
  int64_t n = vtl_tensor_numel(x);
  if (n == 0) return VTL_OK;
  cudaStream_t st = vtl_cu_stream(vtl_cu_device(x));
  if (!st) return vtl_error_status();
  double keep = 1 - p, scale = keep > 0 ? 1 / keep : 0;
  uint32_t thr = (uint32_t)ceil(keep * 16777216.0);
  unsigned blocks = vtl_cu_blocks((n + 3) / 4);
  if (x->dtype == VTL_F32)
    dropout_forward_kernel<float><<<blocks, 256, 0, st>>>(cu_ptr<float>(x), cu_ptr<float>(out), cu_ptr<uint8_t>(mask),
                                                          n, thr, scale, seed, offset);
  else
    dropout_forward_kernel<double><<<blocks, 256, 0, st>>>(cu_ptr<double>(x), cu_ptr<double>(out),
                                                           cu_ptr<uint8_t>(mask), n, thr, scale, seed, offset);
  VTL_CU_LAUNCHED("dropout");
  return VTL_OK;
}

vtl_status cu_dropout_backward(const vtl_tensor *g, const vtl_tensor *mask, vtl_tensor *dx, double p) {
  int64_t n = vtl_tensor_numel(g);
  if (n == 0) return VTL_OK;
  cudaStream_t st = vtl_cu_stream(vtl_cu_device(g));
  if (!st) return vtl_error_status();
  double keep = 1 - p, scale = keep > 0 ? 1 / keep : 0;
  if (g->dtype == VTL_F32)
    dropout_backward_kernel<float><<<vtl_cu_blocks(n), 256, 0, st>>>(cu_ptr<float>(g), cu_ptr<uint8_t>(mask),
                                                                     cu_ptr<float>(dx), n, scale);
  else
    dropout_backward_kernel<double><<<vtl_cu_blocks(n), 256, 0, st>>>(cu_ptr<double>(g), cu_ptr<uint8_t>(mask),
                                                                      cu_ptr<double>(dx), n, scale);
  VTL_CU_LAUNCHED("dropout_backward");
  return VTL_OK;
}

vtl_nn_backend make_table() {
  vtl_nn_backend t = {};
  t.conv2d_forward = vtl_cu_conv2d_forward;
  t.conv2d_backward_data = vtl_cu_conv2d_backward_data;
  t.conv2d_backward_weight = vtl_cu_conv2d_backward_weight;
  t.conv_half = true;
  t.conv_cl = true;
  t.act_half = true;
  t.bn_half = true;
  t.pool2d_forward = vtl_cu_pool2d_forward;
  t.pool2d_backward = vtl_cu_pool2d_backward;
  t.batch_norm_stats = vtl_cu_batch_norm_stats;
  t.batch_norm_forward = vtl_cu_batch_norm_forward;
  t.batch_norm_backward = vtl_cu_batch_norm_backward;
  t.layer_norm_forward = vtl_cu_layer_norm_forward;
  t.layer_norm_backward = vtl_cu_layer_norm_backward;
  t.group_norm_forward = vtl_cu_group_norm_forward;
  t.group_norm_backward = vtl_cu_group_norm_backward;
  t.activation_forward = cu_activation_forward;
  t.activation_backward = cu_activation_backward;
  t.softmax_forward = vtl_cu_softmax_forward;
  t.softmax_backward = vtl_cu_softmax_backward;
  t.attention_forward = vtl_cu_attention_forward;
  t.attention_backward = vtl_cu_attention_backward;
  t.cross_entropy_forward = vtl_cu_cross_entropy_forward;
  t.cross_entropy_backward = vtl_cu_cross_entropy_backward;
  t.dropout_forward = cu_dropout_forward;
  t.dropout_backward = cu_dropout_backward;
  return t;
}

} // namespace

const vtl_nn_backend vtl_cu_nn_backend = make_table();
