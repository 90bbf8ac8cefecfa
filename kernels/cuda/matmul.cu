// CUDA matmul: cuBLAS strided-batched GEMM for f32 (exact f32, or TF32 when allowed), f64, and f16/bf16
// operands computing in f32; a plain kernel for i64. The contract is kernels/cpu/matmul.c's:
// out (batch..., M, N) contiguous; a (batch..., M, K) and b (batch..., K, N) with the same
// batch shape as views (broadcast batch dims have stride 0), each matrix either row- or
// column-contiguous (vtl_gemm_layout; the op layer copies others).
//
// cuBLAS is column-major: the row-major product C = A B is computed as C^T = B^T A^T, so B is
// passed first and the output's leading dimension is N.
#include "common.cuh"
extern "C" {
#include "autocast.h"
#include "gemm.h"
}

namespace {

// C[i, m, n] = sum_k A[i, m, k] * B[i, k, n] with wrapping i64 arithmetic, as the CPU loop
struct i64_args {
  const int64_t *a, *b;
  int64_t *c;
  int64_t M, N, K, batch;
  int nbd;                           // batch dims
  int64_t bshape[VTL_MAX_DIMS];      // batch shape
  int64_t sa[VTL_MAX_DIMS + 2], sb[VTL_MAX_DIMS + 2]; // element strides, batch dims then the two matrix dims
};

__global__ void matmul_i64_kernel(i64_args g) {
  int64_t total = g.batch * g.M * g.N;
  for (int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; t < total; t += (int64_t)gridDim.x * blockDim.x) {
    int64_t n = t % g.N, m = (t / g.N) % g.M, i = t / (g.N * g.M);
    int64_t oa = 0, ob = 0, rem = i;
    for (int d = g.nbd - 1; d >= 0; d--) {
      int64_t k = rem % g.bshape[d];
      rem /= g.bshape[d];
      oa += k * g.sa[d];
      ob += k * g.sb[d];
    }
    uint64_t s = 0;
    for (int64_t k = 0; k < g.K; k++)
      s += (uint64_t)g.a[oa + m * g.sa[g.nbd] + k * g.sa[g.nbd + 1]] * (uint64_t)g.b[ob + k * g.sb[g.nbd] + n * g.sb[g.nbd + 1]];
    g.c[t] = (int64_t)s;
  }
}

cudaDataType_t cuda_type(vtl_dtype dt) {
  switch (dt) {
  case VTL_F64: return CUDA_R_64F;
  case VTL_F16: return CUDA_R_16F;
  case VTL_BF16: return CUDA_R_16BF;
  default: return CUDA_R_32F;
  }
}

} // namespace

vtl_status vtl_cu_matmul(vtl_tensor *out, const vtl_tensor *a, const vtl_tensor *b) {
  int nd = out->ndim, dev = vtl_cu_device(out);
  int64_t M = out->shape[nd - 2], N = out->shape[nd - 1], K = a->shape[nd - 1];
  int64_t batch = 1;
  for (int d = 0; d < nd - 2; d++) batch *= out->shape[d];
  if (M == 0 || N == 0 || batch == 0) return VTL_OK;
  vtl_dtype dt = out->dtype;
  size_t es = vtl_dtype_size(dt);
  cudaStream_t st = vtl_cu_stream(dev);
  if (!st) return vtl_error_status();
  if (K == 0) {
    cudaError_t e = cudaMemsetAsync(vtl_tensor_data(out), 0, (size_t)(batch * M * N) * es, st);
    return e == cudaSuccess ? VTL_OK : vtl_cu_error(e, "matmul");
  }
  if (dt == VTL_I64) {
    i64_args g;
    g.a = (const int64_t *)vtl_tensor_data(a);
    g.b = (const int64_t *)vtl_tensor_data(b);
    g.c = (int64_t *)vtl_tensor_data(out);
    g.M = M; g.N = N; g.K = K; g.batch = batch;
    g.nbd = nd - 2;
    for (int d = 0; d < nd; d++) {
      if (d < nd - 2) g.bshape[d] = out->shape[d];
      g.sa[d] = a->strides[d];
      g.sb[d] = b->strides[d];
    }
    matmul_i64_kernel<<<vtl_cu_blocks(batch * M * N), 256, 0, st>>>(g);
    VTL_CU_LAUNCHED("matmul");
    return VTL_OK;
  }
  if (dt != VTL_F32 && dt != VTL_F64 && dt != VTL_F16 && dt != VTL_BF16)
    return vtl_error_set(VTL_ERR_ARG, "matmul: kernel expects f32, f64, f16, bf16 or i64, got %s", vtl_dtype_name(dt));
  if (a->dtype != dt || b->dtype != dt)
    return vtl_error_set(VTL_ERR_ARG, "matmul: operands must have the output's dtype %s", vtl_dtype_name(dt));
  int ta, tb;
  int64_t lda, ldb;
  if (!vtl_gemm_layout(M, K, a->strides[nd - 2], a->strides[nd - 1], &ta, &lda) ||
      !vtl_gemm_layout(K, N, b->strides[nd - 2], b->strides[nd - 1], &tb, &ldb))
    return vtl_error_set(VTL_ERR_ARG, "matmul: operand layout not supported by the kernel");
  if (M > 0x7fffffff || N > 0x7fffffff || K > 0x7fffffff)
    return vtl_error_set(VTL_ERR_ARG, "matmul: dimensions above 2^31 are not supported on cuda");
  cublasHandle_t h = vtl_cu_blas(dev);
  if (!h) return vtl_error_status();

  // batch dims of size > 1, merged where a, b and out all step through two dims as one
  int64_t bs[VTL_MAX_DIMS], sa[VTL_MAX_DIMS], sb[VTL_MAX_DIMS], so[VTL_MAX_DIMS];
  int nb = 0;
  int64_t ostride = M * N;
  int64_t ost[VTL_MAX_DIMS];
  for (int d = nd - 3; d >= 0; d--) { ost[d] = ostride; ostride *= out->shape[d]; }
  for (int d = 0; d < nd - 2; d++) {
    if (out->shape[d] == 1) continue;
    if (nb > 0 && sa[nb - 1] == a->strides[d] * out->shape[d] && sb[nb - 1] == b->strides[d] * out->shape[d] &&
        so[nb - 1] == ost[d] * out->shape[d]) {
      bs[nb - 1] *= out->shape[d];
      sa[nb - 1] = a->strides[d];
      sb[nb - 1] = b->strides[d];
      so[nb - 1] = ost[d];
      continue;
    }
    bs[nb] = out->shape[d];
    sa[nb] = a->strides[d];
    sb[nb] = b->strides[d];
    so[nb] = ost[d];
    nb++;
  }
  // the innermost batch dim is the strided batch; the others (rare) are a host loop
  int64_t count = nb ? bs[nb - 1] : 1, sA = nb ? sa[nb - 1] : 0, sB = nb ? sb[nb - 1] : 0, sC = nb ? so[nb - 1] : M * N;
  if (count > 0x7fffffff) return vtl_error_set(VTL_ERR_ARG, "matmul: batch of %lld is too large", (long long)count);
  int64_t outer = 1;
  for (int i = 0; i < nb - 1; i++) outer *= bs[i];
  // a batch of row-major a matrices stacked row after row, times one b shared by the batch
  // (stride 0: a linear layer on (B, N, C)), into a contiguous out: one GEMM of count * M rows,
  // which fills the tensor cores' tiles better than count small ones
  if (outer == 1 && count > 1 && sB == 0 && !ta && sA == M * lda && sC == M * N && M * count <= 0x7fffffff) {
    M *= count;
    count = 1;
    sA = sC = 0;
  }
  const char *A = (const char *)vtl_tensor_data(a), *Bp = (const char *)vtl_tensor_data(b);
  char *Cp = (char *)vtl_tensor_data(out);
  cudaDataType_t ty = cuda_type(dt);
  // f32 products are exact f32 unless TF32 is allowed (vtl.cuda.allow_tf32)
  cublasComputeType_t ct = dt == VTL_F64                               ? CUBLAS_COMPUTE_64F
                           : dt == VTL_F32 && vtl_matmul_allow_tf32() ? CUBLAS_COMPUTE_32F_FAST_TF32
                                                                      : CUBLAS_COMPUTE_32F;
  float one_f = 1, zero_f = 0;
  double one_d = 1, zero_d = 0;
  const void *alpha = dt == VTL_F64 ? (const void *)&one_d : (const void *)&one_f;
  const void *beta = dt == VTL_F64 ? (const void *)&zero_d : (const void *)&zero_f;
  for (int64_t j = 0; j < outer; j++) {
    int64_t oa = 0, ob = 0, oc = 0, rem = j;
    for (int i = nb - 2; i >= 0; i--) {
      int64_t k = rem % bs[i];
      rem /= bs[i];
      oa += k * sa[i];
      ob += k * sb[i];
      oc += k * so[i];
    }
    cublasStatus_t s = cublasGemmStridedBatchedEx(
        h, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, (int)N, (int)M, (int)K, alpha,
        Bp + ob * (int64_t)es, ty, (int)ldb, (long long)sB, A + oa * (int64_t)es, ty, (int)lda, (long long)sA, beta,
        Cp + oc * (int64_t)es, ty, (int)N, (long long)sC, (int)count, ct, CUBLAS_GEMM_DEFAULT);
    if (s != CUBLAS_STATUS_SUCCESS)
      return vtl_error_set(VTL_ERR_DEVICE, "matmul: cublasGemmStridedBatchedEx failed (status %d) for %s M=%lld N=%lld K=%lld",
                           (int)s, vtl_dtype_name(dt), (long long)M, (long long)N, (long long)K);
  }
  return VTL_OK;
}
