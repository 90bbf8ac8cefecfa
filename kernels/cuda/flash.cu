// Fused (flash-style) scaled dot-product attention for f16/bf16 on tensor cores: the scores of a
// block of queries against a block of keys live in shared memory only, the softmax runs online
// (a running row maximum and sum rescale the output accumulated so far), and nothing of size
// L x S touches global memory in either pass. The contract is attention.cu's: q (P,L,E), k (P,S,E),
// v (P,S,E) contiguous, out (P,L,E) in the data's type, lse (P,L) f32 = log Σ_j exp(scale q·k_j);
// causal: query i sees keys 0..i. Head dims 32, 64 and 128 (E == Ev); other cases stay on the
// cuBLAS path (vtl_cu_flash_* return 0).
//
// Layout: a block of 4 warps takes 64 query rows (forward, dQ) or 64 keys (dK, dV); each warp
// multiplies its 16-row slab with WMMA 16x16x16 fragments (f32 accumulation) through shared
// memory, where lane pairs (2r, 2r+1) then own row r of the slab, half of its columns each.
//   forward: S = Q Kᵀ, m' = max(m, rowmax(scale S)), P = exp(scale S - m'), l = l e^(m-m') + ΣP,
//            O = O e^(m-m') + P V; at the end O / l and lse = m + log l
//   backward: D_i = Σ dO_i·O_i; P = exp(scale S - lse); dP = dO Vᵀ; dS = P (dP - D)
//            dV = Σ Pᵀ dO, dK = scale Σ dSᵀ Q (blocks over keys), dQ = scale Σ dS K (blocks over
//            queries): two kernels, each recomputing P, so every gradient is a plain sum in a
//            fixed order (no atomics; the results repeat bit for bit).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
#include "nn.cuh"

#define FLASH_SMEM(name) extern __shared__ __align__(128) unsigned char name[]
#include "flash_kernels.cuh"

namespace {

using namespace flash;

bool aligned(const vtl_tensor *t) { return ((uintptr_t)vtl_tensor_data(t) & 15) == 0; }

// whether the fused kernels take this case: half data, head dims equal and 32, 64 or 128, at
// least one query and key, 16-byte aligned operands
bool takes(const vtl_tensor *q, const vtl_tensor *k, const vtl_tensor *v) {
  int64_t E = q->shape[2];
  return (q->dtype == VTL_F16 || q->dtype == VTL_BF16) && v->shape[2] == E && (E == 32 || E == 64 || E == 128) &&
         q->shape[0] > 0 && q->shape[1] > 0 && k->shape[1] > 0 && aligned(q) && aligned(k) && aligned(v);
}

// lets kernel take `smem` bytes of dynamic shared memory on the current device; false when the
// device cannot give that much (the cuBLAS path then serves the call)
template <class K> bool allow_smem(K kernel, size_t smem) {
  if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem) == cudaSuccess) return true;
  cudaGetLastError(); // not sticky
  return false;
}

template <class H, int D>
int forward_t(const vtl_tensor *q, const vtl_tensor *k, const vtl_tensor *v, double scale, bool causal, vtl_tensor *out,
              vtl_tensor *lse, cudaStream_t st) {
  int64_t P = q->shape[0], L = q->shape[1], S = k->shape[1], tiles = (L + BM - 1) / BM;
  if (P * tiles > INT32_MAX) return 0;
  size_t smem = fwd_smem<D>();
  if (!allow_smem(flash_fwd<H, D>, smem)) return 0;
  flash_fwd<H, D><<<(unsigned)(P * tiles), FTHREADS, smem, st>>>(cu_ptr<H>(q), cu_ptr<H>(k), cu_ptr<H>(v), cu_ptr<H>(out),
                                                                 cu_ptr<float>(lse), L, S, tiles, (float)scale, causal);
  cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? 1 : (vtl_cu_error(e, "attention"), -1);
}

template <class H, int D>
int backward_t(const vtl_tensor *g, const vtl_tensor *q, const vtl_tensor *k, const vtl_tensor *v, const vtl_tensor *out,
               const vtl_tensor *lse, double scale, bool causal, vtl_tensor *dq, vtl_tensor *dk, vtl_tensor *dv,
               cudaStream_t st) {
  int64_t P = q->shape[0], L = q->shape[1], S = k->shape[1];
  int64_t qt = (L + BM - 1) / BM, kt = (S + BN - 1) / BN;
  if (P * qt > INT32_MAX || P * kt > INT32_MAX) return 0;
  size_t s1 = dkv_smem<D>(), s2 = dq_smem<D>();
  if (!allow_smem(flash_bwd_dkv<H, D>, s1) || !allow_smem(flash_bwd_dq<H, D>, s2)) return 0;
  cu_scratch dvec((size_t)(P * L) * sizeof(float), vtl_cu_device(q));
  if (!dvec.p) return -1;
  flash_rowdot<H, D><<<(unsigned)((P * L + FWARPS - 1) / FWARPS), FTHREADS, 0, st>>>(cu_ptr<H>(g), cu_ptr<H>(out),
                                                                                    (float *)dvec.p, P * L);
  flash_bwd_dkv<H, D><<<(unsigned)(P * kt), FTHREADS, s1, st>>>(cu_ptr<H>(g), cu_ptr<H>(q), cu_ptr<H>(k), cu_ptr<H>(v),
                                                               cu_ptr<float>(lse), (const float *)dvec.p, cu_ptr<H>(dk),
                                                               cu_ptr<H>(dv), L, S, kt, (float)scale, causal);
  flash_bwd_dq<H, D><<<(unsigned)(P * qt), FTHREADS, s2, st>>>(cu_ptr<H>(g), cu_ptr<H>(q), cu_ptr<H>(k), cu_ptr<H>(v),
                                                              cu_ptr<float>(lse), (const float *)dvec.p, cu_ptr<H>(dq), L,
                                                              S, qt, (float)scale, causal);
  cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? 1 : (vtl_cu_error(e, "attention_backward"), -1);
}

#define FLASH_DISPATCH(dt, E, CALL)                                                                            \
  do {                                                                                                         \
    if (dt == VTL_BF16) {                                                                                      \
      using H = __nv_bfloat16;                                                                                 \
      if (E == 32) { constexpr int D = 32; return CALL; }                                                      \
      if (E == 64) { constexpr int D = 64; return CALL; }                                                      \
      if (E == 128) { constexpr int D = 128; return CALL; }                                                    \
    } else {                                                                                                   \
      using H = __half;                                                                                        \
      if (E == 32) { constexpr int D = 32; return CALL; }                                                      \
      if (E == 64) { constexpr int D = 64; return CALL; }                                                      \
      if (E == 128) { constexpr int D = 128; return CALL; }                                                    \
    }                                                                                                          \
    return 0;                                                                                                  \
  } while (0)

} // namespace

int vtl_cu_flash_forward(const vtl_tensor *q, const vtl_tensor *k, const vtl_tensor *v, double scale, bool causal,
                         vtl_tensor *out, vtl_tensor *lse) {
  if (!takes(q, k, v) || !aligned(out)) return 0;
  cudaStream_t st = vtl_cu_stream(vtl_cu_device(q));
  if (!st) return -1;
  FLASH_DISPATCH(q->dtype, q->shape[2], (forward_t<H, D>(q, k, v, scale, causal, out, lse, st)));
}

int vtl_cu_flash_backward(const vtl_tensor *g, const vtl_tensor *q, const vtl_tensor *k, const vtl_tensor *v,
                          const vtl_tensor *out, const vtl_tensor *lse, double scale, bool causal, vtl_tensor *dq,
                          vtl_tensor *dk, vtl_tensor *dv) {
  if (!takes(q, k, v) || !aligned(g) || !aligned(out)) return 0;
  cudaStream_t st = vtl_cu_stream(vtl_cu_device(q));
  if (!st) return -1;
  FLASH_DISPATCH(q->dtype, q->shape[2], (backward_t<H, D>(g, q, k, v, out, lse, scale, causal, dq, dk, dv, st)));
}
