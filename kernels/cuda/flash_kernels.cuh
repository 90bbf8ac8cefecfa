// The device code of the fused attention kernels (flash.cu): tile constants, the WMMA helpers and
// the forward, row-dot and two backward kernels. Written against a few CUDA names only
// (threadIdx, blockIdx, __syncthreads, __syncwarp, nvcuda::wmma, __half, __nv_bfloat16, uint4,
// FLASH_SMEM) and device.cuh's helpers, so that tests/gpu/flash_emu.cpp can run the same code on
// the host, one thread per CUDA thread, and check it against a reference where no GPU is present.
#ifndef VTL_FLASH_KERNELS_CUH
#define VTL_FLASH_KERNELS_CUH

namespace flash {

using namespace nvcuda;

constexpr int BM = 64, BN = 64; // query rows, keys per block tile
constexpr int FWARPS = 4, FTHREADS = 32 * FWARPS;

template <class H> __device__ __forceinline__ float h2f(H v);
template <> __device__ __forceinline__ float h2f<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float h2f<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
template <class H> __device__ __forceinline__ H f2h(float v);
template <> __device__ __forceinline__ __half f2h<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 f2h<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

using acc_frag = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;
template <class H> using a_row = wmma::fragment<wmma::matrix_a, 16, 16, 16, H, wmma::row_major>;
template <class H> using a_col = wmma::fragment<wmma::matrix_a, 16, 16, 16, H, wmma::col_major>;
template <class H> using b_row = wmma::fragment<wmma::matrix_b, 16, 16, 16, H, wmma::row_major>;
template <class H> using b_col = wmma::fragment<wmma::matrix_b, 16, 16, 16, H, wmma::col_major>;

// rows [r0, r0 + n) of a (len, D) matrix into sm (n, D); rows past len are zero
template <class H, int D> __device__ __forceinline__ void load_rows(H *sm, const H *g, int64_t r0, int64_t len, int n) {
  constexpr int CH = D / 8; // 16-byte chunks per row
  for (int i = threadIdx.x; i < n * CH; i += FTHREADS) {
    int r = i / CH, c = (i % CH) * 8;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (r0 + r < len) v = *(const uint4 *)(g + (r0 + r) * D + c);
    *(uint4 *)(sm + r * D + c) = v;
  }
}

// out (16 x N, f32, leading dim ldo) = A (16 x K) B, A row-major in sm (lda), B as K x N: row-major
// (ldb) when B_ROW, else the transpose of an N x K row-major matrix (ldb); accumulated onto out
// when ACC
template <class H, bool B_ROW, bool ACC>
__device__ __forceinline__ void slab_mma(float *out, int ldo, const H *A, int lda, const H *B, int ldb, int N, int K) {
  for (int n = 0; n < N / 16; n++) {
    acc_frag c;
    if (ACC) wmma::load_matrix_sync(c, out + n * 16, ldo, wmma::mem_row_major);
    else wmma::fill_fragment(c, 0.f);
    for (int k = 0; k < K / 16; k++) {
      a_row<H> a;
      wmma::load_matrix_sync(a, A + k * 16, lda);
      if (B_ROW) {
        b_row<H> b;
        wmma::load_matrix_sync(b, B + k * 16 * ldb + n * 16, ldb);
        wmma::mma_sync(c, a, b, c);
      } else {
        b_col<H> b;
        wmma::load_matrix_sync(b, B + n * 16 * ldb + k * 16, ldb);
        wmma::mma_sync(c, a, b, c);
      }
    }
    wmma::store_matrix_sync(out + n * 16, c, ldo, wmma::mem_row_major);
  }
}

// out (16 x N, f32) += Aᵀ B for the 16 columns [c0, c0 + 16) of A (K x *, row-major, lda) and
// B (K x N, row-major, ldb): the key-side products dV += Pᵀ dO and dK += dSᵀ Q
template <class H>
__device__ __forceinline__ void slab_mma_t(float *out, int ldo, const H *A, int lda, int c0, const H *B, int ldb, int N,
                                           int K) {
  for (int n = 0; n < N / 16; n++) {
    acc_frag c;
    wmma::load_matrix_sync(c, out + n * 16, ldo, wmma::mem_row_major);
    for (int k = 0; k < K / 16; k++) {
      a_col<H> a; // Aᵀ (16 x K) at rows c0.. of Aᵀ = columns c0.. of A
      wmma::load_matrix_sync(a, A + k * 16 * lda + c0, lda);
      b_row<H> b;
      wmma::load_matrix_sync(b, B + k * 16 * ldb + n * 16, ldb);
      wmma::mma_sync(c, a, b, c);
    }
    wmma::store_matrix_sync(out + n * 16, c, ldo, wmma::mem_row_major);
  }
}

// whether query qi may see key kj
__device__ __forceinline__ bool visible(int64_t qi, int64_t kj, int64_t L, int64_t S, bool causal) {
  return qi < L && kj < S && (!causal || kj <= qi);
}

// shared memory of the forward kernel (bytes): Q, K, V tiles, S (f32), P, O (f32)
template <int D> constexpr size_t fwd_smem() {
  return (size_t)(BM * D + 2 * BN * D) * 2 + (size_t)BM * BN * 4 + (size_t)BM * BN * 2 + (size_t)BM * D * 4;
}

template <class H, int D>
__global__ void __launch_bounds__(FTHREADS)
flash_fwd(const H *q, const H *k, const H *v, H *out, float *lse, int64_t L, int64_t S, int64_t tiles, float scale,
          bool causal) {
  FLASH_SMEM(smem);
  H *Qs = (H *)smem, *Ks = Qs + BM * D, *Vs = Ks + BN * D;
  float *Ss = (float *)(Vs + BN * D);
  H *Ps = (H *)(Ss + BM * BN);
  float *Os = (float *)(Ps + BM * BN);
  int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, r = lane >> 1, side = lane & 1;
  int64_t p = blockIdx.x / tiles, q0 = (blockIdx.x % tiles) * (int64_t)BM;
  const H *qp = q + p * L * D, *kp = k + p * S * D, *vp = v + p * S * D;
  load_rows<H, D>(Qs, qp, q0, L, BM);
  for (int i = threadIdx.x; i < BM * D; i += FTHREADS) Os[i] = 0.f;
  H *Qw = Qs + warp * 16 * D, *Pw = Ps + warp * 16 * BN;
  float *Sw = Ss + warp * 16 * BN, *Ow = Os + warp * 16 * D;
  int64_t qi = q0 + warp * 16 + r;
  float m = -INFINITY, l = 0.f;
  int64_t kend = causal && q0 + BM < S ? q0 + BM : S;
  __syncthreads();
  for (int64_t k0 = 0; k0 < kend; k0 += BN) {
    load_rows<H, D>(Ks, kp, k0, S, BN);
    load_rows<H, D>(Vs, vp, k0, S, BN);
    __syncthreads();
    slab_mma<H, false, false>(Sw, BN, Qw, D, Ks, D, BN, D); // S = Q Kᵀ
    __syncwarp();
    float *srow = Sw + r * BN + side * (BN / 2);
    float mb = -INFINITY;
    for (int c = 0; c < BN / 2; c++) {
      float x = visible(qi, k0 + side * (BN / 2) + c, L, S, causal) ? srow[c] * scale : -INFINITY;
      srow[c] = x;
      mb = fmaxf(mb, x);
    }
    mb = fmaxf(mb, __shfl_xor_sync(0xffffffffu, mb, 1));
    float mn = fmaxf(m, mb);
    float alpha = mn == -INFINITY ? 1.f : expf(m - mn), ps = 0.f;
    H *prow = Pw + r * BN + side * (BN / 2);
    for (int c = 0; c < BN / 2; c++) {
      float e = mn == -INFINITY ? 0.f : expf(srow[c] - mn);
      prow[c] = f2h<H>(e);
      ps += e;
    }
    ps += __shfl_xor_sync(0xffffffffu, ps, 1);
    l = l * alpha + ps;
    m = mn;
    float *orow = Ow + r * D + side * (D / 2);
    for (int c = 0; c < D / 2; c++) orow[c] *= alpha;
    __syncwarp();
    slab_mma<H, true, true>(Ow, D, Pw, BN, Vs, D, D, BN); // O += P V
    __syncthreads(); // every warp is done with this K, V tile
  }
  __syncwarp();
  if (qi < L) {
    float inv = l > 0.f ? 1.f / l : 0.f;
    const float *orow = Ow + r * D + side * (D / 2);
    H *op = out + (p * L + qi) * D + side * (D / 2);
    for (int c = 0; c < D / 2; c++) op[c] = f2h<H>(orow[c] * inv);
    if (side == 0) lse[p * L + qi] = m + logf(l);
  }
}

// D_i = Σ_e dO_ie O_ie in f32 (one warp per row, summed in double as the cuBLAS path does)
template <class H, int D>
__global__ void flash_rowdot(const H *g, const H *o, float *dvec, int64_t rows) {
  int lane = threadIdx.x & 31;
  int64_t row = blockIdx.x * (int64_t)FWARPS + (threadIdx.x >> 5);
  if (row >= rows) return;
  double s = 0;
  for (int e = lane; e < D; e += 32) s += (double)h2f(g[row * D + e]) * (double)h2f(o[row * D + e]);
  s = cu_warp_sum(s);
  if (lane == 0) dvec[row] = (float)s;
}

// For the 16 query rows of a warp against a key tile: P = exp(scale S - lse) (f32 in Sw, the
// data's type in Pw), then dS = P (dP - D) in the data's type in DSw; masked entries are 0.
// Sw holds S on entry, dPw holds dP.
template <class H>
__device__ __forceinline__ void probs_dscores(float *Sw, H *Pw, const float *dPw, H *DSw, int r, int side, int64_t qi,
                                              int64_t k0, int64_t L, int64_t S, bool causal, float scale, float lse_i,
                                              float d_i) {
  for (int c = side * (BN / 2); c < (side + 1) * (BN / 2); c++) {
    float pr = visible(qi, k0 + c, L, S, causal) ? expf(Sw[r * BN + c] * scale - lse_i) : 0.f;
    if (Pw) Pw[r * BN + c] = f2h<H>(pr);
    DSw[r * BN + c] = f2h<H>(pr * (dPw[r * BN + c] - d_i));
  }
}

// shared memory of the dK/dV kernel: K, V, Q, dO tiles; S and dP (f32); P and dS; dK and dV (f32)
template <int D> constexpr size_t dkv_smem() {
  return (size_t)(2 * BN * D + 2 * BM * D) * 2 + (size_t)2 * BM * BN * 4 + (size_t)2 * BM * BN * 2 +
         (size_t)2 * BN * D * 4 + (size_t)2 * BM * 4;
}

template <class H, int D>
__global__ void __launch_bounds__(FTHREADS)
flash_bwd_dkv(const H *g, const H *q, const H *k, const H *v, const float *lse, const float *dvec, H *dk, H *dv,
              int64_t L, int64_t S, int64_t tiles, float scale, bool causal) {
  FLASH_SMEM(smem);
  H *Ks = (H *)smem, *Vs = Ks + BN * D, *Qs = Vs + BN * D, *Gs = Qs + BM * D;
  float *Ss = (float *)(Gs + BM * D), *dPs = Ss + BM * BN;
  H *Ps = (H *)(dPs + BM * BN), *DSs = Ps + BM * BN;
  float *dKs = (float *)(DSs + BM * BN), *dVs = dKs + BN * D, *Ls = dVs + BN * D, *Dd = Ls + BM;
  int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, r = lane >> 1, side = lane & 1;
  int64_t p = blockIdx.x / tiles, k0 = (blockIdx.x % tiles) * (int64_t)BN;
  const H *qp = q + p * L * D, *gp = g + p * L * D;
  load_rows<H, D>(Ks, k + p * S * D, k0, S, BN);
  load_rows<H, D>(Vs, v + p * S * D, k0, S, BN);
  for (int i = threadIdx.x; i < BN * D; i += FTHREADS) dKs[i] = dVs[i] = 0.f;
  int64_t qstart = causal ? k0 / BM * BM : 0;
  for (int64_t q0 = qstart; q0 < L; q0 += BM) {
    __syncthreads(); // the previous tile's products are done
    load_rows<H, D>(Qs, qp, q0, L, BM);
    load_rows<H, D>(Gs, gp, q0, L, BM);
    for (int i = threadIdx.x; i < BM; i += FTHREADS) {
      Ls[i] = q0 + i < L ? lse[p * L + q0 + i] : 0.f;
      Dd[i] = q0 + i < L ? dvec[p * L + q0 + i] : 0.f;
    }
    __syncthreads();
    // this warp's 16 query rows of S = Q Kᵀ and dP = dO Vᵀ, then P and dS
    float *Sw = Ss + warp * 16 * BN, *dPw = dPs + warp * 16 * BN;
    slab_mma<H, false, false>(Sw, BN, Qs + warp * 16 * D, D, Ks, D, BN, D);
    slab_mma<H, false, false>(dPw, BN, Gs + warp * 16 * D, D, Vs, D, BN, D);
    __syncwarp();
    int64_t qi = q0 + warp * 16 + r;
    probs_dscores<H>(Sw, Ps + warp * 16 * BN, dPw, DSs + warp * 16 * BN, r, side, qi, k0, L, S, causal, scale,
                     Ls[warp * 16 + r], Dd[warp * 16 + r]);
    __syncthreads(); // every query row's P and dS
    // this warp's 16 keys: dV += Pᵀ dO, dK += dSᵀ Q
    slab_mma_t<H>(dVs + warp * 16 * D, D, Ps, BN, warp * 16, Gs, D, D, BM);
    slab_mma_t<H>(dKs + warp * 16 * D, D, DSs, BN, warp * 16, Qs, D, D, BM);
  }
  __syncthreads();
  for (int i = threadIdx.x; i < BN * D; i += FTHREADS) {
    int64_t kj = k0 + i / D;
    if (kj < S) {
      dk[(p * S + kj) * D + i % D] = f2h<H>(dKs[i] * scale);
      dv[(p * S + kj) * D + i % D] = f2h<H>(dVs[i]);
    }
  }
}

// shared memory of the dQ kernel: Q, dO, K, V tiles; S and dP (f32); dS; dQ (f32); lse and D
template <int D> constexpr size_t dq_smem() {
  return (size_t)(2 * BM * D + 2 * BN * D) * 2 + (size_t)2 * BM * BN * 4 + (size_t)BM * BN * 2 + (size_t)BM * D * 4 +
         (size_t)2 * BM * 4;
}

template <class H, int D>
__global__ void __launch_bounds__(FTHREADS)
flash_bwd_dq(const H *g, const H *q, const H *k, const H *v, const float *lse, const float *dvec, H *dq, int64_t L,
             int64_t S, int64_t tiles, float scale, bool causal) {
  FLASH_SMEM(smem);
  H *Qs = (H *)smem, *Gs = Qs + BM * D, *Ks = Gs + BM * D, *Vs = Ks + BN * D;
  float *Ss = (float *)(Vs + BN * D), *dPs = Ss + BM * BN;
  H *DSs = (H *)(dPs + BM * BN);
  float *dQs = (float *)(DSs + BM * BN), *Ls = dQs + BM * D, *Dd = Ls + BM;
  int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, r = lane >> 1, side = lane & 1;
  int64_t p = blockIdx.x / tiles, q0 = (blockIdx.x % tiles) * (int64_t)BM;
  const H *kp = k + p * S * D, *vp = v + p * S * D;
  load_rows<H, D>(Qs, q + p * L * D, q0, L, BM);
  load_rows<H, D>(Gs, g + p * L * D, q0, L, BM);
  for (int i = threadIdx.x; i < BM * D; i += FTHREADS) dQs[i] = 0.f;
  for (int i = threadIdx.x; i < BM; i += FTHREADS) {
    Ls[i] = q0 + i < L ? lse[p * L + q0 + i] : 0.f;
    Dd[i] = q0 + i < L ? dvec[p * L + q0 + i] : 0.f;
  }
  float *Sw = Ss + warp * 16 * BN, *dPw = dPs + warp * 16 * BN, *dQw = dQs + warp * 16 * D;
  H *DSw = DSs + warp * 16 * BN;
  int64_t qi = q0 + warp * 16 + r;
  int64_t kend = causal && q0 + BM < S ? q0 + BM : S;
  for (int64_t k0 = 0; k0 < kend; k0 += BN) {
    __syncthreads(); // the previous K, V tile is no longer read
    load_rows<H, D>(Ks, kp, k0, S, BN);
    load_rows<H, D>(Vs, vp, k0, S, BN);
    __syncthreads();
    slab_mma<H, false, false>(Sw, BN, Qs + warp * 16 * D, D, Ks, D, BN, D);
    slab_mma<H, false, false>(dPw, BN, Gs + warp * 16 * D, D, Vs, D, BN, D);
    __syncwarp();
    probs_dscores<H>(Sw, nullptr, dPw, DSw, r, side, qi, k0, L, S, causal, scale, Ls[warp * 16 + r], Dd[warp * 16 + r]);
    __syncwarp();
    slab_mma<H, true, true>(dQw, D, DSw, BN, Ks, D, D, BN); // dQ += dS K
  }
  __syncwarp();
  if (qi < L) {
    const float *row = dQw + r * D + side * (D / 2);
    H *o = dq + (p * L + qi) * D + side * (D / 2);
    for (int c = 0; c < D / 2; c++) o[c] = f2h<H>(row[c] * scale);
  }
}

} // namespace flash

#endif
