// Runs the fused attention kernels of kernels/cuda/flash_kernels.cuh on the host and checks them
// against a double-precision reference: each CUDA thread of a block is a host thread, barriers
// stand for __syncthreads/__syncwarp, lane exchanges for __shfl_xor_sync, and the WMMA fragment
// operations are done by lane 0 of each warp on whole 16x16 tiles (the others' fragments are
// never stored, so only lane 0's computation reaches memory, as a warp's single result does).
// Shared memory starts filled with NaN bits, so a read of something never written shows.
// Prints "ok" lines and exits 0 when every case is within its tolerance, 1 otherwise.
//   c++ -std=c++20 -O2 -pthread -Ikernels/cuda tests/gpu/flash_emu.cpp -o flash_emu && ./flash_emu
#include <cmath>
#include <cstdio>
#include <random>
#include <type_traits>

#include "emu.h"
#include "device.cuh"

static unsigned char *emu_smem; // the running block's dynamic shared memory
#define FLASH_SMEM(name) unsigned char *name = emu_smem

// f16 and bf16 as bits, rounded to nearest even
static uint16_t f32_to_f16(float f) {
  uint32_t x;
  memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000, mant = x & 0x7fffff;
  int e = (int)((x >> 23) & 0xff);
  if (e == 0xff) return (uint16_t)(sign | 0x7c00 | (mant ? 0x200 : 0));
  int exp = e - 127 + 15;
  if (exp >= 31) return (uint16_t)(sign | 0x7c00);
  if (exp <= 0) {
    if (exp < -10) return (uint16_t)sign;
    mant |= 0x800000;
    int shift = 14 - exp;
    uint32_t h = mant >> shift, rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (h & 1))) h++;
    return (uint16_t)(sign | h);
  }
  uint32_t h = ((uint32_t)exp << 10) | (mant >> 13), rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++;
  return (uint16_t)(sign | h);
}
static float f16_to_f32(uint16_t h) {
  int e = (h >> 10) & 31, m = h & 0x3ff;
  float v = e == 0 ? std::ldexp((float)m, -24) : e == 31 ? (m ? NAN : INFINITY) : std::ldexp((float)(m | 0x400), e - 25);
  return (h & 0x8000) ? -v : v;
}
static uint16_t f32_to_bf16(float f) {
  uint32_t x;
  memcpy(&x, &f, 4);
  if ((x & 0x7fffffff) > 0x7f800000) return (uint16_t)((x >> 16) | 0x40);
  return (uint16_t)((x + 0x7fff + ((x >> 16) & 1)) >> 16);
}
static float bf16_to_f32(uint16_t b) {
  uint32_t x = (uint32_t)b << 16;
  float f;
  memcpy(&f, &x, 4);
  return f;
}
struct __half {
  uint16_t b;
};
struct __nv_bfloat16 {
  uint16_t b;
};
inline float __half2float(__half h) { return f16_to_f32(h.b); }
inline float __bfloat162float(__nv_bfloat16 h) { return bf16_to_f32(h.b); }
inline __half __float2half_rn(float f) { return {f32_to_f16(f)}; }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return {f32_to_bf16(f)}; }
inline float to_f(float v) { return v; }
inline float to_f(__half h) { return __half2float(h); }
inline float to_f(__nv_bfloat16 h) { return __bfloat162float(h); }

// ---- WMMA 16x16x16 on whole tiles, by lane 0 ----
namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };
template <class Use, int M, int N, int K, class T, class Layout = void> struct fragment {
  float x[16 * 16]; // (row, col) at row * 16 + col
};
inline bool lane0() { return (threadIdx.x & 31) == 0; }
template <class Use, class T, class L> void fill_fragment(fragment<Use, 16, 16, 16, T, L> &f, float v) {
  for (float &e : f.x) e = v;
}
template <class Use, class T, class L> void load_matrix_sync(fragment<Use, 16, 16, 16, T, L> &f, const T *p, unsigned ld) {
  if (!lane0()) return;
  bool row = std::is_same<L, row_major>::value;
  for (int i = 0; i < 16; i++)
    for (int j = 0; j < 16; j++) f.x[i * 16 + j] = to_f(row ? p[i * ld + j] : p[i + j * ld]);
}
inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float> &f, const float *p, unsigned ld, layout_t l) {
  if (!lane0()) return;
  for (int i = 0; i < 16; i++)
    for (int j = 0; j < 16; j++) f.x[i * 16 + j] = l == mem_row_major ? p[i * ld + j] : p[i + j * ld];
}
inline void store_matrix_sync(float *p, const fragment<accumulator, 16, 16, 16, float> &f, unsigned ld, layout_t l) {
  if (!lane0()) return;
  for (int i = 0; i < 16; i++)
    for (int j = 0; j < 16; j++) (l == mem_row_major ? p[i * ld + j] : p[i + j * ld]) = f.x[i * 16 + j];
}
template <class T, class LA, class LB>
void mma_sync(fragment<accumulator, 16, 16, 16, float> &d, const fragment<matrix_a, 16, 16, 16, T, LA> &a,
              const fragment<matrix_b, 16, 16, 16, T, LB> &b, const fragment<accumulator, 16, 16, 16, float> &c) {
  if (!lane0()) return;
  float r[256];
  for (int i = 0; i < 16; i++)
    for (int j = 0; j < 16; j++) {
      float s = c.x[i * 16 + j];
      for (int k = 0; k < 16; k++) s += a.x[i * 16 + k] * b.x[k * 16 + j];
      r[i * 16 + j] = s;
    }
  memcpy(d.x, r, sizeof r);
}
} // namespace wmma
} // namespace nvcuda

#include "flash_kernels.cuh"

using namespace flash;

// runs body for each of `blocks` blocks of FTHREADS threads with `smem` bytes of dynamic shared
// memory, filled with NaN bits (in f32, f16 and bf16) before each block
template <class F> void launch(unsigned blocks, size_t smem, F body) {
  std::vector<unsigned char> buf(smem + 128);
  emu_smem = (unsigned char *)(((uintptr_t)buf.data() + 127) & ~(uintptr_t)127);
  for (unsigned b = 0; b < blocks; b++) {
    memset(emu_smem, 0xff, smem);
    emu_launch({1, 1, 1}, {FTHREADS, 1, 1}, [&] { // one block at a time, with its own index
      blockIdx.x = b;
      body();
    });
  }
}

template <class H> H to_h(float v);
template <> __half to_h<__half>(float v) { return __float2half_rn(v); }
template <> __nv_bfloat16 to_h<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// the largest |got - want| over the largest |want| (at least 0.01: a single key's query and key
// gradients are 0, and the kernels' are rounding residues)
template <class H> double rel_err(const std::vector<H> &got, const std::vector<double> &want) {
  double e = 0, m = 1e-2;
  for (size_t i = 0; i < want.size(); i++) {
    double g = to_f(got[i]);
    if (std::isnan(g)) return INFINITY;
    e = std::max(e, std::fabs(g - want[i]));
    m = std::max(m, std::fabs(want[i]));
  }
  return e / m;
}

template <class H, int D> bool run_case(const char *name, int P, int L, int S, bool causal, double tol) {
  std::mt19937 rng(1234 + L * 7 + S * 13 + D + (causal ? 1 : 0));
  std::normal_distribution<float> nd;
  auto fill = [&](std::vector<H> &v, size_t n) {
    v.resize(n);
    for (auto &e : v) e = to_h<H>(nd(rng));
  };
  std::vector<H> q, k, v, g;
  fill(q, (size_t)P * L * D);
  fill(k, (size_t)P * S * D);
  fill(v, (size_t)P * S * D);
  fill(g, (size_t)P * L * D);
  float scale = 1.0f / std::sqrt((float)D);
  // reference in double on the same (rounded) inputs
  std::vector<double> ro((size_t)P * L * D, 0), rl((size_t)P * L, 0), rdq(q.size(), 0), rdk(k.size(), 0), rdv(v.size(), 0);
  for (int p = 0; p < P; p++)
    for (int i = 0; i < L; i++) {
      int n = causal && i + 1 < S ? i + 1 : S;
      std::vector<double> s(n), pr(n), dp(n);
      double mx = -INFINITY;
      for (int j = 0; j < n; j++) {
        double acc = 0;
        for (int e = 0; e < D; e++) acc += (double)to_f(q[((size_t)p * L + i) * D + e]) * to_f(k[((size_t)p * S + j) * D + e]);
        s[j] = acc * scale;
        mx = std::max(mx, s[j]);
      }
      double sum = 0;
      for (int j = 0; j < n; j++) sum += std::exp(s[j] - mx);
      rl[(size_t)p * L + i] = mx + std::log(sum);
      double dd = 0;
      for (int j = 0; j < n; j++) {
        pr[j] = std::exp(s[j] - mx) / sum;
        double a = 0;
        for (int e = 0; e < D; e++) {
          ro[((size_t)p * L + i) * D + e] += pr[j] * to_f(v[((size_t)p * S + j) * D + e]);
          a += (double)to_f(g[((size_t)p * L + i) * D + e]) * to_f(v[((size_t)p * S + j) * D + e]);
        }
        dp[j] = a;
        dd += pr[j] * a;
      }
      for (int j = 0; j < n; j++) {
        double ds = pr[j] * (dp[j] - dd);
        for (int e = 0; e < D; e++) {
          rdv[((size_t)p * S + j) * D + e] += pr[j] * to_f(g[((size_t)p * L + i) * D + e]);
          rdq[((size_t)p * L + i) * D + e] += scale * ds * to_f(k[((size_t)p * S + j) * D + e]);
          rdk[((size_t)p * S + j) * D + e] += scale * ds * to_f(q[((size_t)p * L + i) * D + e]);
        }
      }
    }
  // the kernels
  std::vector<H> out(ro.size()), dq(q.size()), dk(k.size()), dv(v.size());
  std::vector<float> lse(rl.size()), dvec(rl.size());
  int64_t qt = (L + BM - 1) / BM, kt = (S + BN - 1) / BN;
  launch((unsigned)(P * qt), fwd_smem<D>(),
         [&] { flash_fwd<H, D>(q.data(), k.data(), v.data(), out.data(), lse.data(), L, S, qt, scale, causal); });
  launch((unsigned)((P * L + FWARPS - 1) / FWARPS), 0,
         [&] { flash_rowdot<H, D>(g.data(), out.data(), dvec.data(), (int64_t)P * L); });
  launch((unsigned)(P * kt), dkv_smem<D>(), [&] {
    flash_bwd_dkv<H, D>(g.data(), q.data(), k.data(), v.data(), lse.data(), dvec.data(), dk.data(), dv.data(), L, S, kt,
                        scale, causal);
  });
  launch((unsigned)(P * qt), dq_smem<D>(), [&] {
    flash_bwd_dq<H, D>(g.data(), q.data(), k.data(), v.data(), lse.data(), dvec.data(), dq.data(), L, S, qt, scale, causal);
  });
  double el = 0;
  for (size_t i = 0; i < rl.size(); i++) el = std::max(el, std::fabs(lse[i] - rl[i]) / (1 + std::fabs(rl[i])));
  double eo = rel_err(out, ro), eq = rel_err(dq, rdq), ek = rel_err(dk, rdk), ev = rel_err(dv, rdv);
  bool ok = eo < tol && el < tol && eq < 2 * tol && ek < 2 * tol && ev < 2 * tol;
  printf("%s %s D=%d P=%d L=%d S=%d%s: out %.2e lse %.2e dq %.2e dk %.2e dv %.2e\n", ok ? "ok  " : "FAIL", name, D, P, L,
         S, causal ? " causal" : "", eo, el, eq, ek, ev);
  return ok;
}

int main() {
  bool ok = true;
  for (int causal = 0; causal < 2; causal++) {
    ok &= run_case<__nv_bfloat16, 64>("bf16", 2, 100, 100, causal, 2e-2);
    ok &= run_case<__half, 64>("f16", 2, 70, 130, causal, 4e-3);
    ok &= run_case<__nv_bfloat16, 128>("bf16", 1, 130, 70, causal, 2e-2);
    ok &= run_case<__half, 32>("f16", 3, 64, 64, causal, 4e-3);
  }
  ok &= run_case<__nv_bfloat16, 64>("bf16", 2, 1, 1, false, 2e-2);
  ok &= run_case<__half, 64>("f16", 1, 17, 200, true, 4e-3);
  printf("%s\n", ok ? "all cases within tolerance" : "some cases out of tolerance");
  return ok ? 0 : 1;
}
