/* CPU random fills from a Philox4x32-10 counter-based generator: element i of a fill uses
   64 bits of block (offset + i/2), so results do not depend on the thread count. */
#include <math.h>
#include <omp.h>
#include "iter.h"
#include "backend.h"
#include "philox.h"

/* uniform double in [0, 1) from 53 random bits */
static inline double u53(uint32_t hi, uint32_t lo) {
  return (double)(((uint64_t)hi << 21) ^ (lo >> 11)) * (1.0 / 9007199254740992.0);
}

vtl_status vtl_cpu_random(vtl_tensor *out, int kind, double lo, double hi, uint64_t seed, uint64_t offset) {
  int64_t n = vtl_tensor_numel(out);
  char *p = vtl_tensor_data(out);
  vtl_dtype dt = out->dtype;
  size_t es = vtl_dtype_size(dt);
  uint64_t range = kind == 2 ? (uint64_t)(int64_t)(hi - lo) : 0;
  int nt = n >= VTL_GRAIN && !omp_in_parallel() ? omp_get_max_threads() : 1;
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t b = 0; b < (n + 1) / 2; b++) {
    uint32_t r[4];
    vtl_philox4x32(offset + (uint64_t)b, seed, r);
    double v[2];
    int64_t iv[2] = {0, 0};
    if (kind == 0) {
      /* explicit fused multiply-adds: the GPU kernel rounds the same way (kernels/cuda/random.cu) */
      v[0] = fma(hi - lo, u53(r[0], r[1]), lo);
      v[1] = fma(hi - lo, u53(r[2], r[3]), lo);
      /* rounding to f32 can reach hi; keep the interval half-open */
      for (int j = 0; j < 2; j++)
        if (dt == VTL_F32 && (float)v[j] >= (float)hi && hi > lo) v[j] = nextafterf((float)hi, (float)lo);
    } else if (kind == 1) {
      double u1 = 1.0 - u53(r[0], r[1]), u2 = u53(r[2], r[3]);
      double rad = sqrt(-2.0 * log(u1));
      v[0] = fma(hi * rad, cos(2 * M_PI * u2), lo);
      v[1] = fma(hi * rad, sin(2 * M_PI * u2), lo);
    } else {
      for (int j = 0; j < 2; j++) {
        uint64_t x = (uint64_t)r[2 * j] << 32 | r[2 * j + 1];
        iv[j] = (int64_t)lo + (int64_t)(uint64_t)(((unsigned __int128)x * range) >> 64);
        v[j] = (double)iv[j];
      }
    }
    for (int j = 0; j < 2 && 2 * b + j < n; j++) {
      char *dst = p + (2 * b + j) * (int64_t)es;
      if (dt == VTL_F32) *(float *)dst = (float)v[j];
      else if (kind == 2 && dt == VTL_I64) *(int64_t *)dst = iv[j];
      else vtl_store_from_double(dst, dt, v[j]);
    }
  }
  return VTL_OK;
}
