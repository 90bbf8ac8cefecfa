// Runs the activation kernels of kernels/cuda/act_kernels.cuh on the host (tests/gpu/emu.h): for
// f16 and bf16 data, every activation's forward and backward through the 16-byte path (aligned
// pointers, whole groups and a tail) and through the one-element path (pointers off by one
// element) must give the f32 expression's result rounded once, bit for bit, and so must the
// forward pass in place (the output over the input, as fused inference writes it). Exits 0 when
// all pass.
//   c++ -std=c++20 -O2 -pthread -Ikernels/cuda -Iruntime tests/gpu/act_emu.cpp -o act_emu && ./act_emu
#include <cmath>
#include <cstdio>
#include <random>

#include "emu.h"
#include "device.cuh"
extern "C" {
#include "nn_norm.h"
}
#include "act_kernels.cuh"

template <bool BF> static uint16_t round_to(float v) { return BF ? cu_f32_to_bf16(v) : cu_f32_to_f16(v); }
template <bool BF> static float widen(uint16_t b) { return BF ? cu_bf16_to_f32(b) : cu_f16_to_f32(b); }

// the kernel over n elements of src into dst (both may be the same), 3 blocks of 64 threads
template <bool BF> static void fwd(int act, const uint16_t *x, uint16_t *y, int64_t n) {
  emu_launch({3, 1, 1}, {64, 1, 1}, [&] { act_forward_half<BF>(act, x, y, n, 0.1f, 20.f); });
}
template <bool BF> static void bwd(int act, const uint16_t *g, const uint16_t *s, uint16_t *dx, int64_t n) {
  emu_launch({3, 1, 1}, {64, 1, 1}, [&] { act_backward_half<BF>(act, g, s, dx, n, 0.1f, 20.f); });
}

template <bool BF> static bool check(int act, int64_t n) {
  std::mt19937 rng(act * 131 + (int)n);
  std::normal_distribution<float> nd(0.f, 3.f);
  // buffers with room for an offset of one element; uint4-aligned storage
  std::vector<uint4> xs(n / 8 + 2), gs(n / 8 + 2), ys(n / 8 + 2), y1s(n / 8 + 2), ds(n / 8 + 2), d1s(n / 8 + 2);
  uint16_t *x = (uint16_t *)xs.data(), *g = (uint16_t *)gs.data(), *y = (uint16_t *)ys.data(), *y1 = (uint16_t *)y1s.data();
  uint16_t *dx = (uint16_t *)ds.data(), *dx1 = (uint16_t *)d1s.data();
  for (int64_t i = 0; i < n + 1; i++) x[i] = round_to<BF>(nd(rng)), g[i] = round_to<BF>(nd(rng));
  fwd<BF>(act, x, y, n); // 16-byte groups and a tail
  bool ok = true;
  // reference: each element by the f32 kernel's expression, rounded once
  for (int64_t i = 0; i < n; i++) {
    uint16_t want = round_to<BF>(act_fwd<float>(act, widen<BF>(x[i]), 0.1f, 20.f));
    ok &= memcmp(&y[i], &want, 2) == 0 || (std::isnan(widen<BF>(y[i])) && std::isnan(widen<BF>(want)));
  }
  // every element alone: the pointers one element off 16 bytes
  fwd<BF>(act, x + 1, y1 + 1, n);
  for (int64_t i = 0; i < n; i++) {
    uint16_t want = round_to<BF>(act_fwd<float>(act, widen<BF>(x[i + 1]), 0.1f, 20.f));
    ok &= memcmp(&y1[i + 1], &want, 2) == 0 || (std::isnan(widen<BF>(y1[i + 1])) && std::isnan(widen<BF>(want)));
  }
  // backward, aligned and misaligned (the kernel reads s as the saved input or output alike; x
  // serves as either)
  const uint16_t *s = x;
  bwd<BF>(act, g, s, dx, n);
  bwd<BF>(act, g + 1, x + 1, dx1 + 1, n);
  for (int64_t i = 0; i < n; i++) {
    uint16_t want = round_to<BF>(act_bwd<float>(act, widen<BF>(s[i]), widen<BF>(g[i]), 0.1f, 20.f));
    ok &= memcmp(&dx[i], &want, 2) == 0 || (std::isnan(widen<BF>(dx[i])) && std::isnan(widen<BF>(want)));
    uint16_t want1 = round_to<BF>(act_bwd<float>(act, widen<BF>(x[i + 1]), widen<BF>(g[i + 1]), 0.1f, 20.f));
    ok &= memcmp(&dx1[i + 1], &want1, 2) == 0 || (std::isnan(widen<BF>(dx1[i + 1])) && std::isnan(widen<BF>(want1)));
  }
  // in place: the output over the input
  fwd<BF>(act, x, x, n);
  for (int64_t i = 0; i < n; i++) ok &= memcmp(&x[i], &y[i], 2) == 0 || std::isnan(widen<BF>(y[i]));
  printf("%s %s activation %d n=%lld\n", ok ? "ok  " : "FAIL", BF ? "bf16" : "f16", act, (long long)n);
  return ok;
}

int main() {
  bool ok = true;
  for (int act = 0; act < VTL_ACT_COUNT; act++)
    for (int64_t n : {1, 7, 8, 9, 1001}) ok &= check<true>(act, n) & check<false>(act, n);
  printf("%s\n", ok ? "all checks passed" : "some checks failed");
  return ok ? 0 : 1;
}
