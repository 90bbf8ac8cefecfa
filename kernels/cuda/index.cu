// CUDA gather and scatter along one dim (vtl_op_gather, index_select, scatter, scatter_add),
// and cumsum.
// The op layer has checked the index (i64, every value in range) and the shapes; operands may
// have any strides (index_select's index is a broadcast view). Elements are moved by size, so
// every dtype gathers; scatter_add adds with atomics (two updates of one element in any order).
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include "common.cuh"

namespace {

struct gs_args {
  int nd, dim;
  int64_t numel;                 // elements of the index (the iteration space)
  int64_t shape[VTL_MAX_DIMS];   // the index's shape
  int64_t ist[VTL_MAX_DIMS];     // index strides (elements)
  int64_t vst[VTL_MAX_DIMS];     // strides of the operand iterated like the index: out (gather) / src (scatter)
  int64_t tst[VTL_MAX_DIMS];     // strides of the operand addressed through the index: x (gather) / out (scatter)
};

gs_args args_of(const vtl_tensor *index, const vtl_tensor *iterated, const vtl_tensor *addressed, int dim) {
  gs_args a;
  memset(&a, 0, sizeof a);
  a.nd = index->ndim;
  a.dim = dim;
  a.numel = vtl_tensor_numel(index);
  for (int d = 0; d < a.nd; d++) {
    a.shape[d] = index->shape[d];
    a.ist[d] = index->strides[d];
    a.vst[d] = iterated->strides[d];
    a.tst[d] = addressed->strides[d];
  }
  return a;
}

// element i of the index: its offset in the index, in the iterated operand and in the
// addressed one (whose coordinate along dim is the index value)
__device__ __forceinline__ void offsets(const gs_args &a, const int64_t *ix, int64_t i, int64_t *vo, int64_t *to) {
  int64_t c[VTL_MAX_DIMS], io = 0;
  for (int d = a.nd - 1; d >= 0; d--) {
    int64_t s = a.shape[d], q = i / s;
    c[d] = i - q * s;
    i = q;
  }
  *vo = 0;
  for (int d = 0; d < a.nd; d++) {
    io += c[d] * a.ist[d];
    *vo += c[d] * a.vst[d];
  }
  *to = 0;
  for (int d = 0; d < a.nd; d++) *to += (d == a.dim ? ix[io] : c[d]) * a.tst[d];
}

template <class T> __global__ void gather_k(T *out, const T *x, const int64_t *ix, gs_args a) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < a.numel; i += (int64_t)gridDim.x * blockDim.x) {
    int64_t vo, to;
    offsets(a, ix, i, &vo, &to);
    out[vo] = x[to];
  }
}

template <class T> __global__ void scatter_k(T *out, const T *src, const int64_t *ix, gs_args a) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < a.numel; i += (int64_t)gridDim.x * blockDim.x) {
    int64_t vo, to;
    offsets(a, ix, i, &vo, &to);
    out[to] = src[vo];
  }
}

template <class T, class A> __global__ void scatter_add_k(T *out, const T *src, const int64_t *ix, gs_args a) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < a.numel; i += (int64_t)gridDim.x * blockDim.x) {
    int64_t vo, to;
    offsets(a, ix, i, &vo, &to);
    atomicAdd((A *)(out + to), *(const A *)(src + vo));
  }
}

template <class T> vtl_status launch_gather(vtl_tensor *out, const vtl_tensor *x, const vtl_tensor *index, const gs_args &a,
                                            cudaStream_t st) {
  gather_k<T><<<vtl_cu_blocks(a.numel), 256, 0, st>>>((T *)vtl_tensor_data(out), (const T *)vtl_tensor_data(x),
                                                      (const int64_t *)vtl_tensor_data(index), a);
  VTL_CU_LAUNCHED("gather");
  return VTL_OK;
}

template <class T> vtl_status launch_scatter(vtl_tensor *out, const vtl_tensor *src, const vtl_tensor *index,
                                             const gs_args &a, cudaStream_t st) {
  scatter_k<T><<<vtl_cu_blocks(a.numel), 256, 0, st>>>((T *)vtl_tensor_data(out), (const T *)vtl_tensor_data(src),
                                                       (const int64_t *)vtl_tensor_data(index), a);
  VTL_CU_LAUNCHED("scatter");
  return VTL_OK;
}

template <class T, class A> vtl_status launch_add(vtl_tensor *out, const vtl_tensor *src, const vtl_tensor *index,
                                                  const gs_args &a, cudaStream_t st) {
  scatter_add_k<T, A><<<vtl_cu_blocks(a.numel), 256, 0, st>>>((T *)vtl_tensor_data(out), (const T *)vtl_tensor_data(src),
                                                              (const int64_t *)vtl_tensor_data(index), a);
  VTL_CU_LAUNCHED("scatter_add");
  return VTL_OK;
}

} // namespace

vtl_status vtl_cu_gather(vtl_tensor *out, const vtl_tensor *x, int dim, const vtl_tensor *index) {
  gs_args a = args_of(index, out, x, dim);
  if (a.numel == 0) return VTL_OK;
  cudaStream_t st = vtl_cu_stream(vtl_cu_device(x));
  if (!st) return vtl_error_status();
  switch (vtl_dtype_size(x->dtype)) {
  case 1: return launch_gather<uint8_t>(out, x, index, a, st);
  case 2: return launch_gather<uint16_t>(out, x, index, a, st);
  case 4: return launch_gather<uint32_t>(out, x, index, a, st);
  default: return launch_gather<unsigned long long>(out, x, index, a, st);
  }
}

vtl_status vtl_cu_scatter(vtl_tensor *out, int dim, const vtl_tensor *index, const vtl_tensor *src, bool accumulate) {
  gs_args a = args_of(index, src, out, dim);
  if (a.numel == 0) return VTL_OK;
  cudaStream_t st = vtl_cu_stream(vtl_cu_device(out));
  if (!st) return vtl_error_status();
  if (!accumulate) {
    switch (vtl_dtype_size(out->dtype)) {
    case 1: return launch_scatter<uint8_t>(out, src, index, a, st);
    case 2: return launch_scatter<uint16_t>(out, src, index, a, st);
    case 4: return launch_scatter<uint32_t>(out, src, index, a, st);
    default: return launch_scatter<unsigned long long>(out, src, index, a, st);
    }
  }
  switch (out->dtype) {
  case VTL_F32: return launch_add<float, float>(out, src, index, a, st);
  case VTL_F64: return launch_add<double, double>(out, src, index, a, st);
  case VTL_F16: return launch_add<uint16_t, __half>(out, src, index, a, st);
  case VTL_BF16: return launch_add<uint16_t, __nv_bfloat16>(out, src, index, a, st);
  case VTL_I32: return launch_add<int, int>(out, src, index, a, st);
  case VTL_I64: return launch_add<unsigned long long, unsigned long long>(out, src, index, a, st); // two's complement
  default:
    return vtl_error_set(VTL_ERR_ARG, "scatter_add: %s tensors are not supported on cuda; use :cpu()",
                         vtl_dtype_name(out->dtype));
  }
}

// ---- cumsum: one thread per (a, b) line scans its R elements in order, accumulating as the
// CPU kernel does (f32 in double, i64 wrapping), so the results are bit-identical ----

namespace {
template <class T, class Acc> __global__ void cumsum_k(T *out, const T *x, int64_t A, int64_t R, int64_t B) {
  for (int64_t o = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; o < A * B; o += (int64_t)gridDim.x * blockDim.x) {
    int64_t a = o / B, b = o - a * B, base = a * R * B + b;
    Acc acc = 0;
    for (int64_t r = 0; r < R; r++) {
      acc += (Acc)x[base + r * B];
      out[base + r * B] = (T)acc;
    }
  }
}
} // namespace

vtl_status vtl_cu_cumsum(vtl_tensor *out, const vtl_tensor *x, int64_t A, int64_t R, int64_t B) {
  if (A * R * B == 0) return VTL_OK;
  cudaStream_t st = vtl_cu_stream(vtl_cu_device(x));
  if (!st) return vtl_error_status();
  unsigned blocks = vtl_cu_blocks(A * B);
  switch (x->dtype) {
  case VTL_F32:
    cumsum_k<float, double><<<blocks, 256, 0, st>>>((float *)vtl_tensor_data(out), (const float *)vtl_tensor_data(x), A,
                                                    R, B);
    break;
  case VTL_F64:
    cumsum_k<double, double><<<blocks, 256, 0, st>>>((double *)vtl_tensor_data(out), (const double *)vtl_tensor_data(x),
                                                     A, R, B);
    break;
  case VTL_I64: // unsigned: wraps like the CPU's
    cumsum_k<unsigned long long, unsigned long long><<<blocks, 256, 0, st>>>(
        (unsigned long long *)vtl_tensor_data(out), (const unsigned long long *)vtl_tensor_data(x), A, R, B);
    break;
  default: return vtl_error_set(VTL_ERR_ARG, "cumsum: kernel expects f32, f64 or i64, got %s", vtl_dtype_name(x->dtype));
  }
  VTL_CU_LAUNCHED("cumsum");
  return VTL_OK;
}
