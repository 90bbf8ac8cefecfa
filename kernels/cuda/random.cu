// CUDA random fills from the Philox4x32-10 stream of kernels/cpu/random.c: element i uses
// 64 bits of block (offset + i/2), with the same arithmetic (explicit fused multiply-adds), so
// a seeded fill on the GPU equals the CPU's (normal values within an ulp of the double-precision
// log/sin/cos of the two math libraries before rounding to the tensor's dtype).
#include "common.cuh"
#include "cpu/philox.h"

namespace {

__device__ __forceinline__ double u53(uint32_t hi, uint32_t lo) {
  return (double)(((uint64_t)hi << 21) ^ (lo >> 11)) * (1.0 / 9007199254740992.0);
}

// out: n contiguous elements of dtype dt; kind 0 uniform [lo, hi), 1 normal(lo, hi), 2 integers
__global__ void random_kernel(char *out, int dt, int64_t n, int kind, double lo, double hi, uint64_t range, uint64_t seed,
                              uint64_t offset) {
  const double two_pi = 6.283185307179586;
  int64_t nb = (n + 1) / 2;
  int es = cu_dtype_size(dt);
  for (int64_t b = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; b < nb; b += (int64_t)gridDim.x * blockDim.x) {
    uint32_t r[4];
    vtl_philox4x32(offset + (uint64_t)b, seed, r);
    double v[2];
    int64_t iv[2] = {0, 0};
    if (kind == 0) {
      v[0] = __fma_rn(hi - lo, u53(r[0], r[1]), lo);
      v[1] = __fma_rn(hi - lo, u53(r[2], r[3]), lo);
      for (int j = 0; j < 2; j++)
        if (dt == VTL_F32 && (float)v[j] >= (float)hi && hi > lo) v[j] = nextafterf((float)hi, (float)lo);
    } else if (kind == 1) {
      double u1 = 1.0 - u53(r[0], r[1]), u2 = u53(r[2], r[3]);
      double rad = sqrt(-2.0 * log(u1));
      double scale = __dmul_rn(hi, rad), ang = __dmul_rn(two_pi, u2);
      v[0] = __fma_rn(scale, cos(ang), lo);
      v[1] = __fma_rn(scale, sin(ang), lo);
    } else {
      for (int j = 0; j < 2; j++) {
        uint64_t x = (uint64_t)r[2 * j] << 32 | r[2 * j + 1];
        iv[j] = (int64_t)lo + (int64_t)__umul64hi(x, range);
        v[j] = (double)iv[j];
      }
    }
    for (int j = 0; j < 2 && 2 * b + j < n; j++) {
      char *dst = out + (2 * b + j) * (int64_t)es;
      if (dt == VTL_F32) *(float *)dst = (float)v[j];
      else if (kind == 2 && dt == VTL_I64) *(int64_t *)dst = iv[j];
      else cu_store_double(dst, dt, v[j]);
    }
  }
}

} // namespace

vtl_status vtl_cu_random(vtl_tensor *out, int kind, double lo, double hi, uint64_t seed, uint64_t offset) {
  int64_t n = vtl_tensor_numel(out);
  if (n == 0) return VTL_OK;
  if (!vtl_tensor_is_contiguous(out)) return vtl_error_set(VTL_ERR_ARG, "random: expected a contiguous tensor");
  cudaStream_t st = vtl_cu_stream(vtl_cu_device(out));
  if (!st) return vtl_error_status();
  uint64_t range = kind == 2 ? (uint64_t)(int64_t)(hi - lo) : 0;
  random_kernel<<<vtl_cu_blocks((n + 1) / 2), 256, 0, st>>>((char *)vtl_tensor_data(out), out->dtype, n, kind, lo, hi,
                                                            range, seed, offset);
  VTL_CU_LAUNCHED("random");
  return VTL_OK;
}
