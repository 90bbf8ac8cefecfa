// Device helpers that need nothing of the CUDA runtime API: element conversions that round as
// the CPU does (runtime/dtype.c, vtl_cpu_cast), sums and maxima over a warp or a block, and the
// f32/f64 math functions. common.cuh includes it for the backend; the host emulation of kernels
// (tests/gpu/emu.h) includes it with its own stand-ins for threadIdx, __shfl_xor_sync and
// __syncthreads.
#ifndef VTL_CUDA_DEVICE_CUH
#define VTL_CUDA_DEVICE_CUH
#include <math.h>
#include <stdint.h>
#include <string.h>

// ---- element conversions (same rounding as runtime/dtype.c and vtl_cpu_cast) ----

__host__ __device__ static inline float cu_f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
  if (exp == 0) {
    if (man == 0) bits = sign;
    else {
      int e = -1;
      do { e++; man <<= 1; } while (!(man & 0x400));
      bits = sign | (uint32_t)(127 - 15 - e) << 23 | (man & 0x3ff) << 13;
    }
  } else if (exp == 31) bits = sign | 0x7f800000u | man << 13;
  else bits = sign | (exp + 127 - 15) << 23 | man << 13;
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

__host__ __device__ static inline uint16_t cu_f32_to_f16(float f) {
  uint32_t x;
  memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000, ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) return (uint16_t)(sign | 0x7c00 | (ax > 0x7f800000u ? 0x200 : 0));
  if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00);
  if (ax < 0x38800000u) {
    if (ax < 0x33000000u) return (uint16_t)sign;
    uint32_t e = ax >> 23, man = (ax & 0x7fffff) | 0x800000;
    int shift = 126 - (int)e;
    uint32_t q = man >> shift, rem = man & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1))) q++;
    return (uint16_t)(sign | q);
  }
  uint32_t r = ax + 0xfff + ((ax >> 13) & 1);
  return (uint16_t)(sign | ((r - 0x38000000u) >> 13));
}

__host__ __device__ static inline float cu_bf16_to_f32(uint16_t h) {
  uint32_t bits = (uint32_t)h << 16;
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

__host__ __device__ static inline uint16_t cu_f32_to_bf16(float f) {
  uint32_t x;
  memcpy(&x, &f, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40);
  x += 0x7fff + ((x >> 16) & 1);
  return (uint16_t)(x >> 16);
}

// sums over a warp (every lane gets the total; the order is fixed, so results repeat)
__device__ __forceinline__ double cu_warp_sum(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
// the max with NaN winning
template <class T> __device__ __forceinline__ T cu_nanmax(T a, T b) { return a != a ? a : (b > a || b != b) ? b : a; }
template <class T> __device__ __forceinline__ T cu_warp_max(T v) {
  for (int o = 16; o > 0; o >>= 1) v = cu_nanmax(v, (T)__shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Block-wide sum of one double per thread (blockDim.x a multiple of 32, at most 1024); every
// thread gets the total. sh: 32 doubles of shared memory.
__device__ __forceinline__ double cu_block_sum(double v, double *sh) {
  int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = cu_warp_sum(v);
  __syncthreads();
  if (lane == 0) sh[wid] = v;
  __syncthreads();
  double t = lane < nw ? sh[lane] : 0.0;
  return cu_warp_sum(t);
}

// f32 and f64 versions of the math functions
__device__ __forceinline__ float cu_exp(float x) { return expf(x); }
__device__ __forceinline__ double cu_exp(double x) { return exp(x); }
__device__ __forceinline__ float cu_erf(float x) { return erff(x); }
__device__ __forceinline__ double cu_erf(double x) { return erf(x); }
__device__ __forceinline__ float cu_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double cu_tanh(double x) { return tanh(x); }
__device__ __forceinline__ float cu_log1p(float x) { return log1pf(x); }
__device__ __forceinline__ double cu_log1p(double x) { return log1p(x); }
__device__ __forceinline__ float cu_expm1(float x) { return expm1f(x); }
__device__ __forceinline__ double cu_expm1(double x) { return expm1(x); }

#endif
