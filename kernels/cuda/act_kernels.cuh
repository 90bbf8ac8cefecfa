// The activation kernels of nn_act.cu (device code only): forward and backward in the data's
// own type for f32/f64, and in f32 for f16/bf16 data moved 16 bytes at a time, with the CPU's
// derivative conventions at the kinks (kernels/cpu/activation.c). Built on device.cuh and the
// vtl_activation numbers, so tests/gpu/act_emu.cpp runs the same code on the host.
#ifndef VTL_ACT_KERNELS_CUH
#define VTL_ACT_KERNELS_CUH

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

#endif
