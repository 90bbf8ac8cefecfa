// CUDA sort and nonzero. Sort: along the last dim of a contiguous (A, R) tensor of f64 or i64 keys (the op layer
// converts), with the CPU kernel's order: stable, NaN after every number (ascending) or before
// (descending), -0 equal to +0. The keys are mapped to unsigned integers in that order and
// sorted per row by CUB's segmented radix sort (stable in both directions), carrying positions.
#include <cub/cub.cuh>
#include <thrust/iterator/counting_iterator.h>
#include "common.cuh"

namespace {

__global__ void make_keys(unsigned long long *keys, long long *pos, const char *x, bool isf, int64_t A, int64_t R) {
  int64_t n = A * R;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    unsigned long long k;
    if (isf) {
      double d = ((const double *)x)[i];
      if (d != d) k = ~0ull; // NaN: past +inf
      else {
        if (d == 0) d = 0; // -0 as +0
        unsigned long long b = (unsigned long long)__double_as_longlong(d);
        k = (b >> 63) ? ~b : b | 0x8000000000000000ull;
      }
    } else {
      k = (unsigned long long)((const long long *)x)[i] ^ 0x8000000000000000ull;
    }
    keys[i] = k;
    pos[i] = (long long)(i % R);
  }
}

__global__ void row_offsets(int *off, int64_t A, int64_t R) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i <= A; i += (int64_t)gridDim.x * blockDim.x)
    off[i] = (int)(i * R);
}

// values[a, r] = x[a, idx[a, r]]
__global__ void take_rows(char *values, const char *x, const long long *idx, int64_t A, int64_t R) {
  int64_t n = A * R;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    int64_t row = i / R;
    ((long long *)values)[i] = ((const long long *)x)[row * R + idx[i]];
  }
}


} // namespace

vtl_status vtl_cu_sort(vtl_tensor *values, vtl_tensor *indices, const vtl_tensor *x, int64_t A, int64_t R,
                       bool descending) {
  bool isf = x->dtype == VTL_F64;
  if (!isf && x->dtype != VTL_I64) return vtl_error_set(VTL_ERR_ARG, "sort: kernel expects f64 or i64 keys");
  int64_t n = A * R;
  if (n == 0) return VTL_OK;
  if (n > INT_MAX || A + 1 > INT_MAX)
    return vtl_error_set(VTL_ERR_ARG, "sort: %lld elements are more than cuda's sort takes (%d)", (long long)n, INT_MAX);
  int dev = vtl_cu_device(x);
  cudaStream_t st = vtl_cu_stream(dev);
  if (!st) return vtl_error_status();
  cu_scratch keys_in((size_t)n * 8, dev), keys_out((size_t)n * 8, dev), pos_in((size_t)n * 8, dev),
      off((size_t)(A + 1) * 4, dev);
  if (!keys_in.p || !keys_out.p || !pos_in.p || !off.p) return vtl_error_status();
  unsigned long long *ki = (unsigned long long *)keys_in.p, *ko = (unsigned long long *)keys_out.p;
  long long *pi = (long long *)pos_in.p, *po = (long long *)vtl_tensor_data(indices);
  int *o = (int *)off.p;
  make_keys<<<vtl_cu_blocks(n), 256, 0, st>>>(ki, pi, (const char *)vtl_tensor_data(x), isf, A, R);
  VTL_CU_LAUNCHED("sort keys");
  row_offsets<<<vtl_cu_blocks(A + 1), 256, 0, st>>>(o, A, R);
  VTL_CU_LAUNCHED("sort offsets");
  size_t tb = 0;
  cudaError_t e = descending
                      ? cub::DeviceSegmentedRadixSort::SortPairsDescending(nullptr, tb, ki, ko, pi, po, (int)n, (int)A,
                                                                           o, o + 1, 0, 64, st)
                      : cub::DeviceSegmentedRadixSort::SortPairs(nullptr, tb, ki, ko, pi, po, (int)n, (int)A, o, o + 1,
                                                                 0, 64, st);
  if (e != cudaSuccess) return vtl_cu_error(e, "sort (workspace size)");
  cu_scratch tmp(tb, dev);
  if (!tmp.p) return vtl_error_status();
  e = descending ? cub::DeviceSegmentedRadixSort::SortPairsDescending(tmp.p, tb, ki, ko, pi, po, (int)n, (int)A, o,
                                                                      o + 1, 0, 64, st)
                 : cub::DeviceSegmentedRadixSort::SortPairs(tmp.p, tb, ki, ko, pi, po, (int)n, (int)A, o, o + 1, 0, 64,
                                                            st);
  if (e != cudaSuccess) return vtl_cu_error(e, "sort");
  take_rows<<<vtl_cu_blocks(n), 256, 0, st>>>((char *)vtl_tensor_data(values), (const char *)vtl_tensor_data(x), po, A,
                                              R);
  VTL_CU_LAUNCHED("sort values");
  return VTL_OK;
}

// ---- nonzero_flat: positions of the set bytes of a contiguous bool tensor, in order (CUB's
// DeviceSelect::Flagged over the positions 0..n-1); the op layer sized out by counting first ----

vtl_status vtl_cu_nonzero_flat(vtl_tensor *out, const vtl_tensor *mask) {
  int64_t n = vtl_tensor_numel(mask);
  if (n == 0 || vtl_tensor_numel(out) == 0) return VTL_OK;
  if (n > INT_MAX) return vtl_error_set(VTL_ERR_ARG, "nonzero: %lld elements are more than cuda's takes (%d)", (long long)n, INT_MAX);
  int dev = vtl_cu_device(mask);
  cudaStream_t st = vtl_cu_stream(dev);
  if (!st) return vtl_error_status();
  thrust::counting_iterator<long long> pos(0);
  const unsigned char *flags = (const unsigned char *)vtl_tensor_data(mask);
  long long *o = (long long *)vtl_tensor_data(out);
  cu_scratch count(sizeof(int), dev);
  if (!count.p) return vtl_error_status();
  size_t tb = 0;
  cudaError_t e = cub::DeviceSelect::Flagged(nullptr, tb, pos, flags, o, (int *)count.p, (int)n, st);
  if (e != cudaSuccess) return vtl_cu_error(e, "nonzero (workspace size)");
  cu_scratch tmp(tb, dev);
  if (!tmp.p) return vtl_error_status();
  e = cub::DeviceSelect::Flagged(tmp.p, tb, pos, flags, o, (int *)count.p, (int)n, st);
  return e == cudaSuccess ? VTL_OK : vtl_cu_error(e, "nonzero");
}
