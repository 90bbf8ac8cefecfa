// CUDA scaled dot-product attention (the nn table's attention_forward / attention_backward; the
// contract is runtime/backend.h's). The (sample, head) pairs run in chunks whose L x S scores fit a
// bounded workspace: per chunk, cuBLAS strided-batched products (tensor cores for f16/bf16, f32
// accumulation) around row kernels, one warp per query row.
//   forward:  S = scale q kᵀ (f32) -> P = softmax(S) (the data's type), lse -> out = P v
//   backward: S again -> P = exp(S - lse) -> dv = Pᵀ g, dP = g vᵀ (f32)
//             -> dS = P (dP - rowsum(g out)) (the data's type) -> dq = scale dS k, dk = scale dSᵀ q
// Only the (P, L) log-sum-exp is kept between the passes, never the probabilities.
//
// cuBLAS is column-major: a row-major r x c matrix is its c x r transpose with leading dim c, so
// each row-major product C = A B below is issued as Cᵀ = Bᵀ Aᵀ.
#include "nn.cuh"
extern "C" {
#include "autocast.h"
}

namespace {

constexpr int WARPS = 8;                       // warps (query rows) per block of the row kernels
constexpr size_t WORKSPACE = (size_t)256 << 20; // bytes of scores per chunk of pairs (at least one pair)

// element access: f32/f64 as they are, f16/bf16 as bits converted through f32
template <int DT> struct elem { using T = float; using A = float; };
template <> struct elem<VTL_F64> { using T = double; using A = double; };
template <> struct elem<VTL_F16> { using T = uint16_t; using A = float; };
template <> struct elem<VTL_BF16> { using T = uint16_t; using A = float; };

template <int DT> __device__ __forceinline__ typename elem<DT>::A ld(typename elem<DT>::T v) {
  if constexpr (DT == VTL_BF16) return cu_bf16_to_f32(v);
  else if constexpr (DT == VTL_F16) return cu_f16_to_f32(v);
  else return v;
}
template <int DT> __device__ __forceinline__ typename elem<DT>::T st(typename elem<DT>::A v) {
  if constexpr (DT == VTL_BF16) return cu_f32_to_bf16(v);
  else if constexpr (DT == VTL_F16) return cu_f32_to_f16(v);
  else return v;
}

// forward rows: s (rows of S, f32/f64) -> p (the data's type; may alias s when the types agree),
// lse; query i of its pair (row % L) sees keys 0..i when causal
template <int DT>
__global__ void attn_softmax(const typename elem<DT>::A *s, typename elem<DT>::T *p, typename elem<DT>::A *lse,
                             int64_t rows, int64_t L, int64_t S, bool causal) {
  using A = typename elem<DT>::A;
  int lane = threadIdx.x & 31;
  int64_t row = blockIdx.x * (int64_t)WARPS + (threadIdx.x >> 5);
  if (row >= rows) return;
  int64_t n = causal && row % L + 1 < S ? row % L + 1 : S;
  const A *sr = s + row * S;
  typename elem<DT>::T *pr = p + row * S;
  A m = -INFINITY;
  for (int64_t j = lane; j < n; j += 32) m = cu_nanmax(m, sr[j]);
  m = cu_warp_max(m);
  double sum = 0;
  for (int64_t j = lane; j < n; j += 32) sum += (double)cu_exp(sr[j] - m);
  sum = cu_warp_sum(sum);
  A inv = (A)(1.0 / sum);
  __syncwarp();
  for (int64_t j = lane; j < S; j += 32) pr[j] = st<DT>(j < n ? cu_exp(sr[j] - m) * inv : (A)0);
  if (lane == 0) lse[row] = (A)((double)m + log(sum));
}

// backward rows: s (scores) -> exp(s - lse) in place (0 where masked) and, for half data, in the
// data's type into p
template <int DT>
__global__ void attn_probs(typename elem<DT>::A *s, typename elem<DT>::T *p, const typename elem<DT>::A *lse,
                           int64_t rows, int64_t L, int64_t S, bool causal) {
  using A = typename elem<DT>::A;
  int lane = threadIdx.x & 31;
  int64_t row = blockIdx.x * (int64_t)WARPS + (threadIdx.x >> 5);
  if (row >= rows) return;
  int64_t n = causal && row % L + 1 < S ? row % L + 1 : S;
  A l = lse[row];
  A *sr = s + row * S;
  for (int64_t j = lane; j < S; j += 32) {
    A e = j < n ? cu_exp(sr[j] - l) : (A)0;
    sr[j] = e;
    if (p) p[row * S + j] = st<DT>(e);
  }
}

// dS = P (dP - Σ_e g out) per row, written in the data's type (ds may alias dp when the types
// agree)
template <int DT>
__global__ void attn_dscores(const typename elem<DT>::A *pr_all, const typename elem<DT>::A *dp,
                             const typename elem<DT>::T *g, const typename elem<DT>::T *out,
                             typename elem<DT>::T *ds, int64_t rows, int64_t S, int64_t Ev) {
  using A = typename elem<DT>::A;
  int lane = threadIdx.x & 31;
  int64_t row = blockIdx.x * (int64_t)WARPS + (threadIdx.x >> 5);
  if (row >= rows) return;
  double d = 0;
  for (int64_t e = lane; e < Ev; e += 32) d += (double)ld<DT>(g[row * Ev + e]) * (double)ld<DT>(out[row * Ev + e]);
  A dd = (A)cu_warp_sum(d);
  __syncwarp();
  for (int64_t j = lane; j < S; j += 32) {
    int64_t i = row * S + j;
    ds[i] = st<DT>(pr_all[i] * (dp[i] - dd));
  }
}

cudaDataType_t blas_type(vtl_dtype dt) {
  switch (dt) {
  case VTL_F64: return CUDA_R_64F;
  case VTL_F16: return CUDA_R_16F;
  case VTL_BF16: return CUDA_R_16BF;
  default: return CUDA_R_32F;
  }
}

// what a chunk of pairs needs: cuBLAS, the stream, the types
struct ctx {
  cublasHandle_t h;
  cudaStream_t st;
  vtl_dtype dt;
  cudaDataType_t ty, acc; // the data's type; the scores' (f32, f64 for f64 data)
  cublasComputeType_t ct;
  int64_t L, S, E, Ev;
};

// column-major C = alpha op(A) op(B) for `count` pairs with strides; A, B of type ta/tb, C of tc
vtl_status gemm(const ctx &c, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha,
                const void *A, cudaDataType_t ta, int64_t lda, int64_t sa, const void *B, cudaDataType_t tb,
                int64_t ldb, int64_t sb, void *C, cudaDataType_t tc, int64_t ldc, int64_t sc, int64_t count) {
  float af = (float)alpha, zf = 0;
  double ad = alpha, zd = 0;
  bool f64 = c.dt == VTL_F64;
  cublasStatus_t s = cublasGemmStridedBatchedEx(
      c.h, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, (int)m, (int)n, (int)k,
      f64 ? (const void *)&ad : (const void *)&af, A, ta, (int)lda, sa, B, tb, (int)ldb, sb,
      f64 ? (const void *)&zd : (const void *)&zf, C, tc, (int)ldc, sc, (int)count, c.ct, CUBLAS_GEMM_DEFAULT);
  if (s != CUBLAS_STATUS_SUCCESS)
    return vtl_error_set(VTL_ERR_DEVICE, "attention: cuBLAS product failed (status %d)", (int)s);
  return VTL_OK;
}

ctx make_ctx(const vtl_tensor *q, const vtl_tensor *k, const vtl_tensor *v, bool *ok) {
  ctx c = {};
  int dev = vtl_cu_device(q);
  c.st = vtl_cu_stream(dev);
  c.h = c.st ? vtl_cu_blas(dev) : nullptr;
  *ok = c.h != nullptr;
  c.dt = q->dtype;
  c.ty = blas_type(c.dt);
  c.acc = c.dt == VTL_F64 ? CUDA_R_64F : CUDA_R_32F;
  c.ct = c.dt == VTL_F64                               ? CUBLAS_COMPUTE_64F
         : c.dt == VTL_F32 && vtl_matmul_allow_tf32() ? CUBLAS_COMPUTE_32F_FAST_TF32
                                                      : CUBLAS_COMPUTE_32F;
  c.L = q->shape[1];
  c.S = k->shape[1];
  c.E = q->shape[2];
  c.Ev = v->shape[2];
  return c;
}

// pairs per chunk: nbuf score-sized buffers of a chunk within WORKSPACE
int64_t chunk_pairs(const ctx &c, int64_t P, int nbuf) {
  size_t per = (size_t)(c.L * c.S) * (c.dt == VTL_F64 ? 8 : 4) * (size_t)nbuf;
  int64_t n = per ? (int64_t)(WORKSPACE / per) : P;
  if (n < 1) n = 1;
  return n > P ? P : n;
}

unsigned row_blocks(int64_t rows) { return (unsigned)((rows + WARPS - 1) / WARPS); }

// S (count pairs, row-major L x S) = scale q kᵀ: column-major Sᵀ (S x L) = k qᵀ
vtl_status scores(const ctx &c, const char *q, const char *k, void *s, int64_t count, double scale) {
  return gemm(c, true, false, c.S, c.L, c.E, scale, k, c.ty, c.E, c.S * c.E, q, c.ty, c.E, c.L * c.E, s, c.acc, c.S,
              c.L * c.S, count);
}

template <int DT>
vtl_status forward_t(const vtl_tensor *q, const vtl_tensor *k, const vtl_tensor *v, double scale, bool causal,
                     vtl_tensor *out, vtl_tensor *lse) {
  using T = typename elem<DT>::T;
  using A = typename elem<DT>::A;
  bool ok;
  ctx c = make_ctx(q, k, v, &ok);
  if (!ok) return vtl_error_status();
  int64_t P = q->shape[0], L = c.L, S = c.S, E = c.E, Ev = c.Ev;
  if (P == 0 || L == 0) return VTL_OK;
  int dev = vtl_cu_device(q);
  bool half = DT == VTL_F16 || DT == VTL_BF16;
  int64_t n = chunk_pairs(c, P, half ? 2 : 1);
  size_t sbytes = (size_t)(n * L * S) * sizeof(A), pbytes = half ? (size_t)(n * L * S) * sizeof(T) : 0;
  char *ws = (char *)vtl_cu_alloc(sbytes + pbytes, dev);
  if (!ws) return vtl_error_status();
  A *sbuf = (A *)ws;
  T *pbuf = half ? (T *)(ws + sbytes) : (T *)sbuf;
  size_t es = sizeof(T);
  vtl_status r = VTL_OK;
  for (int64_t p0 = 0; p0 < P && r == VTL_OK; p0 += n) {
    int64_t cnt = P - p0 < n ? P - p0 : n;
    const char *qp = (const char *)vtl_tensor_data(q) + p0 * L * E * es;
    const char *kp = (const char *)vtl_tensor_data(k) + p0 * S * E * es;
    const char *vp = (const char *)vtl_tensor_data(v) + p0 * S * Ev * es;
    char *op = (char *)vtl_tensor_data(out) + p0 * L * Ev * es;
    A *lp = (A *)vtl_tensor_data(lse) + p0 * L;
    r = scores(c, qp, kp, sbuf, cnt, scale);
    if (r != VTL_OK) break;
    attn_softmax<DT><<<row_blocks(cnt * L), 32 * WARPS, 0, c.st>>>(sbuf, pbuf, lp, cnt * L, L, S, causal);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) { r = vtl_cu_error(e, "attention"); break; }
    // out (L x Ev) = P v: column-major outᵀ (Ev x L) = vᵀ Pᵀ
    r = gemm(c, false, false, Ev, L, S, 1.0, vp, c.ty, Ev, S * Ev, pbuf, c.ty, S, L * S, op, c.ty, Ev, L * Ev, cnt);
  }
  vtl_cu_free(ws, sbytes + pbytes, dev);
  return r;
}

template <int DT>
vtl_status backward_t(const vtl_tensor *g, const vtl_tensor *q, const vtl_tensor *k, const vtl_tensor *v,
                      const vtl_tensor *out, const vtl_tensor *lse, double scale, bool causal, vtl_tensor *dq,
                      vtl_tensor *dk, vtl_tensor *dv) {
  using T = typename elem<DT>::T;
  using A = typename elem<DT>::A;
  bool ok;
  ctx c = make_ctx(q, k, v, &ok);
  if (!ok) return vtl_error_status();
  int64_t P = q->shape[0], L = c.L, S = c.S, E = c.E, Ev = c.Ev;
  size_t es = sizeof(T);
  if (P == 0) return VTL_OK;
  if (L == 0 || S == 0) { // no products: zero gradients
    cudaError_t e = cudaMemsetAsync(vtl_tensor_data(dq), 0, (size_t)(P * L * E) * es, c.st);
    if (e == cudaSuccess) e = cudaMemsetAsync(vtl_tensor_data(dk), 0, (size_t)(P * S * E) * es, c.st);
    if (e == cudaSuccess) e = cudaMemsetAsync(vtl_tensor_data(dv), 0, (size_t)(P * S * Ev) * es, c.st);
    return e == cudaSuccess ? VTL_OK : vtl_cu_error(e, "attention_backward");
  }
  int dev = vtl_cu_device(q);
  bool half = DT == VTL_F16 || DT == VTL_BF16;
  int64_t n = chunk_pairs(c, P, half ? 3 : 2);
  size_t abytes = (size_t)(n * L * S) * sizeof(A), hbytes = half ? (size_t)(n * L * S) * sizeof(T) : 0;
  char *ws = (char *)vtl_cu_alloc(2 * abytes + hbytes, dev);
  if (!ws) return vtl_error_status();
  A *pbuf = (A *)ws, *dpbuf = (A *)(ws + abytes);
  T *hbuf = half ? (T *)(ws + 2 * abytes) : (T *)dpbuf; // P, then dS, in the data's type
  vtl_status r = VTL_OK;
  for (int64_t p0 = 0; p0 < P && r == VTL_OK; p0 += n) {
    int64_t cnt = P - p0 < n ? P - p0 : n;
    const char *gp = (const char *)vtl_tensor_data(g) + p0 * L * Ev * es;
    const char *qp = (const char *)vtl_tensor_data(q) + p0 * L * E * es;
    const char *kp = (const char *)vtl_tensor_data(k) + p0 * S * E * es;
    const char *vp = (const char *)vtl_tensor_data(v) + p0 * S * Ev * es;
    const char *op = (const char *)vtl_tensor_data(out) + p0 * L * Ev * es;
    const A *lp = (const A *)vtl_tensor_data(lse) + p0 * L;
    char *dqp = (char *)vtl_tensor_data(dq) + p0 * L * E * es;
    char *dkp = (char *)vtl_tensor_data(dk) + p0 * S * E * es;
    char *dvp = (char *)vtl_tensor_data(dv) + p0 * S * Ev * es;
    r = scores(c, qp, kp, pbuf, cnt, scale);
    if (r != VTL_OK) break;
    attn_probs<DT><<<row_blocks(cnt * L), 32 * WARPS, 0, c.st>>>(pbuf, half ? hbuf : nullptr, lp, cnt * L, L, S,
                                                                  causal);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) { r = vtl_cu_error(e, "attention_backward"); break; }
    const void *pdata = half ? (const void *)hbuf : (const void *)pbuf;
    // dv (S x Ev) = Pᵀ g: column-major dvᵀ (Ev x S) = gᵀ P
    r = gemm(c, false, true, Ev, S, L, 1.0, gp, c.ty, Ev, L * Ev, pdata, c.ty, S, L * S, dvp, c.ty, Ev, S * Ev, cnt);
    // dP (L x S, f32) = g vᵀ: column-major dPᵀ (S x L) = v gᵀ
    if (r == VTL_OK)
      r = gemm(c, true, false, S, L, Ev, 1.0, vp, c.ty, Ev, S * Ev, gp, c.ty, Ev, L * Ev, dpbuf, c.acc, S, L * S, cnt);
    if (r != VTL_OK) break;
    attn_dscores<DT><<<row_blocks(cnt * L), 32 * WARPS, 0, c.st>>>(pbuf, dpbuf, (const T *)gp, (const T *)op, hbuf,
                                                                    cnt * L, S, Ev);
    e = cudaGetLastError();
    if (e != cudaSuccess) { r = vtl_cu_error(e, "attention_backward"); break; }
    // dq (L x E) = scale dS k: column-major dqᵀ (E x L) = kᵀ dSᵀ
    r = gemm(c, false, false, E, L, S, scale, kp, c.ty, E, S * E, hbuf, c.ty, S, L * S, dqp, c.ty, E, L * E, cnt);
    // dk (S x E) = scale dSᵀ q: column-major dkᵀ (E x S) = qᵀ dS
    if (r == VTL_OK)
      r = gemm(c, false, true, E, S, L, scale, qp, c.ty, E, L * E, hbuf, c.ty, S, L * S, dkp, c.ty, E, S * E, cnt);
  }
  vtl_cu_free(ws, 2 * abytes + hbytes, dev);
  return r;
}

} // namespace

#define ATTN_DISPATCH(dt, CALL)                                                                                  \
  switch (dt) {                                                                                                \
  case VTL_F32: { constexpr int DT = VTL_F32; return CALL; }                                                   \
  case VTL_F64: { constexpr int DT = VTL_F64; return CALL; }                                                   \
  case VTL_F16: { constexpr int DT = VTL_F16; return CALL; }                                                   \
  case VTL_BF16: { constexpr int DT = VTL_BF16; return CALL; }                                                 \
  default: return vtl_error_set(VTL_ERR_ARG, "attention: kernel supports f32, f64, f16 and bf16, got %s",     \
                                vtl_dtype_name(dt));                                                           \
  }

vtl_status vtl_cu_attention_forward(const vtl_tensor *q, const vtl_tensor *k, const vtl_tensor *v, double scale,
                                    bool causal, vtl_tensor *out, vtl_tensor *lse) {
  if (q->shape[0] * q->shape[1] > 0 && k->shape[1] == 0) // no keys: NaN rows, as on the CPU
    return vtl_cu_fill(out, NAN) != VTL_OK ? vtl_error_status() : vtl_cu_fill(lse, -INFINITY);
  if (vtl_attention_flash()) {
    int r = vtl_cu_flash_forward(q, k, v, scale, causal, out, lse);
    if (r != 0) return r > 0 ? VTL_OK : vtl_error_status();
  }
  ATTN_DISPATCH(q->dtype, forward_t<DT>(q, k, v, scale, causal, out, lse))
}

vtl_status vtl_cu_attention_backward(const vtl_tensor *g, const vtl_tensor *q, const vtl_tensor *k,
                                     const vtl_tensor *v, const vtl_tensor *out, const vtl_tensor *lse, double scale,
                                     bool causal, vtl_tensor *dq, vtl_tensor *dk, vtl_tensor *dv) {
  if (vtl_attention_flash()) {
    int r = vtl_cu_flash_backward(g, q, k, v, out, lse, scale, causal, dq, dk, dv);
    if (r != 0) return r > 0 ? VTL_OK : vtl_error_status();
  }
  ATTN_DISPATCH(q->dtype, backward_t<DT>(g, q, k, v, out, lse, scale, causal, dq, dk, dv))
}
