// Shared by the CUDA backend files: devices and streams, error checks, dtype conversions that
// round exactly as the CPU kernels do (runtime/dtype.c, kernels/cpu/iter.c), and the strided
// iterator that elementwise kernels walk.
#ifndef VTL_CUDA_COMMON_CUH
#define VTL_CUDA_COMMON_CUH
#include <cuda_runtime.h>
#include <cublas_v2.h>
#include <stdint.h>
#include <string.h>
#include "device.cuh"
extern "C" {
#include "core.h"
#include "backend.h"
#include "iter_dims.h"
}

// ---- devices, streams, handles (backend.cu) ----

// Makes dev current on the calling thread and returns its compute stream (created on first
// use); NULL with the error set on failure.
cudaStream_t vtl_cu_stream(int dev);
// The cuBLAS handle of dev, bound to its compute stream; NULL with the error set.
cublasHandle_t vtl_cu_blas(int dev);
// Scratch memory from the caching allocator (stream-ordered like every tensor).
void *vtl_cu_alloc(size_t n, int dev);
void vtl_cu_free(void *p, size_t n, int dev);
// Multiprocessors of dev (read once; a guess when the query fails), for sizing grids.
int vtl_cu_sm_count(int dev);
// Sets the error for a failed CUDA call and returns its status.
vtl_status vtl_cu_error(cudaError_t e, const char *what);

// Kernels of the other files, gathered into the backend table by backend.cu.
vtl_status vtl_cu_unary(vtl_unary_op op, vtl_tensor *out, const vtl_tensor *x, vtl_dtype compute, const double *params);
vtl_status vtl_cu_binary(vtl_binary_op op, vtl_tensor *out, const vtl_tensor *a, const vtl_tensor *b, vtl_dtype compute);
vtl_status vtl_cu_where(vtl_tensor *out, const vtl_tensor *cond, const vtl_tensor *a, const vtl_tensor *b, vtl_dtype compute);
vtl_status vtl_cu_lerp(vtl_tensor *out, const vtl_tensor *a, const vtl_tensor *b, const vtl_tensor *w);
vtl_status vtl_cu_fill(vtl_tensor *out, double value);
vtl_status vtl_cu_fused(vtl_fused_op op, vtl_tensor *y, const vtl_tensor *a, const vtl_tensor *b, double value);
vtl_status vtl_cu_optim_multi(const vtl_optim_step *st, const vtl_optim_item *items, int n, int dev);
vtl_status vtl_cu_reduce(vtl_reduce_op op, vtl_tensor *out, vtl_tensor *idx, const vtl_tensor *x, int64_t A, int64_t R,
                         int64_t B, double param);
vtl_status vtl_cu_matmul(vtl_tensor *out, const vtl_tensor *a, const vtl_tensor *b);
vtl_status vtl_cu_random(vtl_tensor *out, int kind, double lo, double hi, uint64_t seed, uint64_t offset);
vtl_status vtl_cu_gather(vtl_tensor *out, const vtl_tensor *x, int dim, const vtl_tensor *index);
vtl_status vtl_cu_cumsum(vtl_tensor *out, const vtl_tensor *x, int64_t A, int64_t R, int64_t B);
vtl_status vtl_cu_sort(vtl_tensor *values, vtl_tensor *indices, const vtl_tensor *x, int64_t A, int64_t R,
                       bool descending);
vtl_status vtl_cu_nonzero_flat(vtl_tensor *out, const vtl_tensor *mask);
vtl_status vtl_cu_scatter(vtl_tensor *out, int dim, const vtl_tensor *index, const vtl_tensor *src, bool accumulate);

// Checks the launch just made.
#define VTL_CU_LAUNCHED(what) do { cudaError_t e_ = cudaGetLastError(); if (e_ != cudaSuccess) return vtl_cu_error(e_, what); } while (0)

static inline int vtl_cu_device(const vtl_tensor *t) { return vtl_tensor_device(t).index; }

// Blocks for n elements at 256 threads, capped; kernels loop with a grid stride.
static inline unsigned vtl_cu_blocks(int64_t n) {
  int64_t b = (n + 255) / 256;
  return (unsigned)(b < 1 ? 1 : b > 65536 ? 65536 : b);
}

// ---- element conversions and warp/block sums: device.cuh ----

__device__ __forceinline__ double cu_load_double(const char *p, int dt) {
  switch (dt) {
  case VTL_F32: return *(const float *)p;
  case VTL_F64: return *(const double *)p;
  case VTL_F16: return cu_f16_to_f32(*(const uint16_t *)p);
  case VTL_BF16: return cu_bf16_to_f32(*(const uint16_t *)p);
  case VTL_I64: return (double)*(const int64_t *)p;
  case VTL_I32: return *(const int32_t *)p;
  case VTL_U8: return *(const uint8_t *)p;
  case VTL_BOOL: return *(const uint8_t *)p != 0;
  default: return 0;
  }
}

__device__ __forceinline__ int64_t cu_load_int(const char *p, int dt) {
  switch (dt) {
  case VTL_I64: return *(const int64_t *)p;
  case VTL_I32: return *(const int32_t *)p;
  case VTL_U8: return *(const uint8_t *)p;
  case VTL_BOOL: return *(const uint8_t *)p != 0;
  default: return (int64_t)cu_load_double(p, dt);
  }
}

__device__ __forceinline__ void cu_store_double(char *p, int dt, double v) {
  switch (dt) {
  case VTL_F32: *(float *)p = (float)v; break;
  case VTL_F64: *(double *)p = v; break;
  case VTL_F16: *(uint16_t *)p = cu_f32_to_f16((float)v); break;
  case VTL_BF16: *(uint16_t *)p = cu_f32_to_bf16((float)v); break;
  case VTL_I64:
    *(int64_t *)p = v != v ? 0 : v >= 9.2233720368547758e18 ? INT64_MAX : v <= -9.2233720368547758e18 ? INT64_MIN : (int64_t)v;
    break;
  case VTL_I32: *(int32_t *)p = (int32_t)(int64_t)(v != v ? 0 : v > 4e18 ? 4e18 : v < -4e18 ? -4e18 : v); break;
  case VTL_U8: *(uint8_t *)p = (uint8_t)(int64_t)(v != v ? 0 : v > 4e18 ? 4e18 : v < -4e18 ? -4e18 : v); break;
  case VTL_BOOL: *(uint8_t *)p = v != 0; break;
  default: break;
  }
}

__host__ __device__ static inline int cu_dtype_size(int dt) {
  return dt == VTL_F64 || dt == VTL_I64 ? 8 : dt == VTL_F32 || dt == VTL_I32 ? 4 : dt == VTL_F16 || dt == VTL_BF16 ? 2 : 1;
}

__device__ __forceinline__ bool cu_intlike(int d) { return d == VTL_I64 || d == VTL_I32 || d == VTL_U8 || d == VTL_BOOL; }

// One element of src (dtype sd) written to dst as dtype dd, as vtl_cpu_cast does.
__device__ __forceinline__ void cu_cast(char *dst, int dd, const char *src, int sd) {
  if (dd == sd) {
    switch (cu_dtype_size(dd)) {
    case 1: *(uint8_t *)dst = *(const uint8_t *)src; return;
    case 2: *(uint16_t *)dst = *(const uint16_t *)src; return;
    case 4: *(uint32_t *)dst = *(const uint32_t *)src; return;
    default: *(uint64_t *)dst = *(const uint64_t *)src; return;
    }
  }
  if (dd == VTL_F32) {
    switch (sd) {
    case VTL_F16: *(float *)dst = cu_f16_to_f32(*(const uint16_t *)src); return;
    case VTL_BF16: *(float *)dst = cu_bf16_to_f32(*(const uint16_t *)src); return;
    case VTL_F64: *(float *)dst = (float)*(const double *)src; return;
    case VTL_I64: *(float *)dst = (float)*(const int64_t *)src; return;
    case VTL_I32: *(float *)dst = (float)*(const int32_t *)src; return;
    case VTL_U8: case VTL_BOOL: *(float *)dst = (float)*(const uint8_t *)src; return;
    default: break;
    }
  }
  if (sd == VTL_F32) {
    switch (dd) {
    case VTL_F16: *(uint16_t *)dst = cu_f32_to_f16(*(const float *)src); return;
    case VTL_BF16: *(uint16_t *)dst = cu_f32_to_bf16(*(const float *)src); return;
    case VTL_F64: *(double *)dst = *(const float *)src; return;
    default: break;
    }
  }
  if (dd == VTL_BOOL) { *(uint8_t *)dst = cu_load_double(src, sd) != 0; return; }
  if (cu_intlike(dd) && cu_intlike(sd)) {
    int64_t v = cu_load_int(src, sd);
    if (dd == VTL_I64) *(int64_t *)dst = v;
    else if (dd == VTL_I32) *(int32_t *)dst = (int32_t)v;
    else *(uint8_t *)dst = (uint8_t)v;
    return;
  }
  cu_store_double(dst, dd, cu_load_double(src, sd));
}

// A value of compute type C (dtype code CDT) loaded from / stored to any dtype.
template <class C, int CDT> __device__ __forceinline__ C cu_load(const char *p, int dt) {
  if (dt == CDT) return *(const C *)p;
  C v;
  cu_cast((char *)&v, CDT, p, dt);
  return v;
}
template <class C, int CDT> __device__ __forceinline__ void cu_store(char *p, int dt, C v) {
  if (dt == CDT) { *(C *)p = v; return; }
  cu_cast(p, dt, (const char *)&v, CDT);
}

// Scratch device memory from the caching allocator, released (stream-ordered) when it goes out
// of scope.
struct cu_scratch {
  void *p = nullptr;
  size_t n = 0;
  int dev = 0;
  cu_scratch(size_t bytes, int device) : n(bytes ? bytes : 1), dev(device) {
    p = vtl_cu_alloc(n, dev);
    if (!p) vtl_error_set(VTL_ERR_OOM, "cuda: out of memory (%zu bytes of scratch)", n);
  }
  ~cu_scratch() { if (p) vtl_cu_free(p, n, dev); }
  cu_scratch(const cu_scratch &) = delete;
  cu_scratch &operator=(const cu_scratch &) = delete;
};

// ---- the strided iterator: operand 0 is the output, inputs are views broadcast to it ----
#define VTL_CU_MAXOPS 4
struct vtl_cu_iter {
  int nops, nd;
  int64_t numel;
  int64_t shape[VTL_MAX_DIMS];
  int64_t st[VTL_CU_MAXOPS][VTL_MAX_DIMS]; // byte strides
  char *base[VTL_CU_MAXOPS];
  int dt[VTL_CU_MAXOPS];
};

// Collapses the operands' dims as kernels/cpu/iter.c does (kernels/iter_dims.h).
static inline void vtl_cu_iter_make(vtl_cu_iter *it, int nops, const vtl_tensor *const *ts) {
  memset(it, 0, sizeof *it);
  it->nops = nops;
  for (int o = 0; o < nops; o++) { it->base[o] = (char *)vtl_tensor_data(ts[o]); it->dt[o] = ts[o]->dtype; }
  int nd = vtl_iter_dims(nops, ts, it->shape, it->st, &it->numel);
  it->nd = nd;
  if (nd == 0) { // one element
    it->shape[0] = 1;
    for (int o = 0; o < nops; o++) it->st[o][0] = 0;
  }
}

// True when the iteration is one dim (no index arithmetic) and every operand has dtype dt.
static inline bool vtl_cu_iter_flat(const vtl_cu_iter *it, int dt) {
  if (it->nd > 1) return false;
  for (int o = 0; o < it->nops; o++)
    if (it->dt[o] != dt) return false;
  return true;
}

// Byte offsets of element i (row-major over the collapsed shape) for each operand.
__device__ __forceinline__ void cu_offsets(const vtl_cu_iter &it, int64_t i, int64_t *off) {
#pragma unroll
  for (int o = 0; o < VTL_CU_MAXOPS; o++) off[o] = 0;
  if (it.nd <= 1) {
#pragma unroll
    for (int o = 0; o < VTL_CU_MAXOPS; o++) off[o] = i * it.st[o][0];
    return;
  }
  for (int d = it.nd - 1; d >= 0; d--) {
    int64_t s = it.shape[d], q = i / s, r = i - q * s;
    i = q;
#pragma unroll
    for (int o = 0; o < VTL_CU_MAXOPS; o++) off[o] += r * it.st[o][d];
  }
}

#endif
