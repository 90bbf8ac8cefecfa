// Runs the batch-norm and layer-norm kernels of kernels/cuda/norm_kernels.cuh on the host
// (tests/gpu/emu.h) and checks them where no GPU is present:
//   - layer norm, one warp per row (widths 1 to 1024, the register sizes of nn_norm.cu's
//     LN_BY_WIDTH) against a double-precision reference and against the block-per-row kernel,
//     forward (output, mean, rstd) and the input gradient;
//   - batch norm's 16-byte steps against the one-element ones, which must give the same bits:
//     the channels-last partial sums (statistics and gradient sums) and the elementwise passes
//     (forward and input gradient, rows of channels and planes), for f32, f64 and bf16 data;
//     and the elementwise passes against the formula in double.
// Prints one line per check and exits 0 when all pass.
//   c++ -std=c++20 -O2 -pthread -Ikernels/cuda tests/gpu/norm_emu.cpp -o norm_emu && ./norm_emu
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>

#include "emu.h"
#include "device.cuh"
#include "norm_kernels.cuh"

static bool all_ok = true;
static void check(bool ok, const char *fmt, double v, const char *what) {
  printf("%s ", ok ? "ok  " : "FAIL");
  printf(fmt, what, v);
  printf("\n");
  all_ok &= ok;
}

static std::mt19937 rng(7);
static std::vector<float> randn(size_t n, float scale = 1, float shift = 0) {
  std::normal_distribution<float> nd;
  std::vector<float> v(n);
  for (auto &e : v) e = nd(rng) * scale + shift;
  return v;
}

// ---- layer norm ----

template <int VPT> void ln_warp_fwd(const float *x, float *y, int64_t M, int64_t D, const float *w, const float *b,
                                    double *mean, double *rstd) {
  emu_launch({(unsigned)((M + LN_WARPS - 1) / LN_WARPS), 1, 1}, {32 * LN_WARPS, 1, 1},
             [&] { ln_forward_warp<float, VPT>(x, y, M, D, w, b, 1e-5, mean, rstd); });
}
template <int VPT> void ln_warp_bwd(const float *g, const float *x, int64_t M, int64_t D, const float *w,
                                    const double *mean, const double *rstd, float *dx) {
  emu_launch({(unsigned)((M + LN_WARPS - 1) / LN_WARPS), 1, 1}, {32 * LN_WARPS, 1, 1},
             [&] { ln_backward_dx_warp<float, VPT>(g, x, M, D, w, mean, rstd, dx); });
}

static void layer_norm(int64_t D) {
  const int64_t M = 37;
  auto x = randn(M * D, 2, 0.5), w = randn(D), b = randn(D), g = randn(M * D);
  std::vector<float> y(M * D), yb(M * D), dx(M * D);
  std::vector<double> mean(M), rstd(M), meanb(M), rstdb(M);
  // nn_norm.cu's LN_BY_WIDTH: the fewest registers per lane that hold a row
  if (D <= 128) ln_warp_fwd<4>(x.data(), y.data(), M, D, w.data(), b.data(), mean.data(), rstd.data());
  else if (D <= 256) ln_warp_fwd<8>(x.data(), y.data(), M, D, w.data(), b.data(), mean.data(), rstd.data());
  else if (D <= 512) ln_warp_fwd<16>(x.data(), y.data(), M, D, w.data(), b.data(), mean.data(), rstd.data());
  else ln_warp_fwd<32>(x.data(), y.data(), M, D, w.data(), b.data(), mean.data(), rstd.data());
  emu_launch({4, 1, 1}, {256, 1, 1},
             [&] { ln_forward<float>(x.data(), yb.data(), M, D, w.data(), b.data(), 1e-5, meanb.data(), rstdb.data()); });
  if (D <= 128) ln_warp_bwd<4>(g.data(), x.data(), M, D, w.data(), mean.data(), rstd.data(), dx.data());
  else if (D <= 256) ln_warp_bwd<8>(g.data(), x.data(), M, D, w.data(), mean.data(), rstd.data(), dx.data());
  else if (D <= 512) ln_warp_bwd<16>(g.data(), x.data(), M, D, w.data(), mean.data(), rstd.data(), dx.data());
  else ln_warp_bwd<32>(g.data(), x.data(), M, D, w.data(), mean.data(), rstd.data(), dx.data());
  double ey = 0, es = 0, eb = 0, edx = 0, sdx = 1e-30;
  for (int64_t r = 0; r < M; r++) {
    double mu = 0, q = 0;
    for (int64_t j = 0; j < D; j++) mu += x[r * D + j];
    mu /= D;
    for (int64_t j = 0; j < D; j++) q += (x[r * D + j] - mu) * (x[r * D + j] - mu);
    double rs = 1 / std::sqrt(q / D + 1e-5), s1 = 0, s2 = 0;
    es = std::max({es, std::fabs(mean[r] - mu), std::fabs(rstd[r] - rs) / rs});
    for (int64_t j = 0; j < D; j++) {
      double xh = (x[r * D + j] - mu) * rs, h = (double)g[r * D + j] * w[j];
      ey = std::max(ey, std::fabs(y[r * D + j] - (xh * w[j] + b[j])));
      eb = std::max(eb, std::fabs((double)y[r * D + j] - yb[r * D + j]));
      s1 += h;
      s2 += h * xh;
    }
    for (int64_t j = 0; j < D; j++) {
      double xh = (x[r * D + j] - mu) * rs, h = (double)g[r * D + j] * w[j];
      double want = rs * (h - s1 / D - xh * s2 / D);
      edx = std::max(edx, std::fabs(dx[r * D + j] - want));
      sdx = std::max(sdx, std::fabs(want));
    }
  }
  char what[64];
  snprintf(what, sizeof what, "layer norm, one warp per row, width %lld", (long long)D);
  check(ey < 1e-4 && es < 1e-9, "%s: output %.2e", ey, what);
  check(eb < 1e-4, "%s: against the block kernel %.2e", eb, what);
  check(edx / sdx < 1e-4, "%s: input gradient %.2e", edx / sdx, what);
}

// ---- batch norm ----

template <class T> T to_t(float v) { return (T)v; }
template <> bf16_bits to_t<bf16_bits>(float v) { return bf16_bits{cu_f32_to_bf16(v)}; }
template <class T> bool same_bits(const std::vector<T> &a, const std::vector<T> &b) {
  return memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

// outputs of a clamp for the masked gradient sums: values on both sides of [0, 6], on its
// bounds, +inf and NaN
template <class T> std::vector<T> clamp_outputs(int64_t n) {
  auto f = randn(n, 4, 3);
  std::vector<T> y(n);
  for (int64_t i = 0; i < n; i++) {
    float v = i % 11 == 0 ? 0.f : i % 13 == 0 ? 6.f : i % 37 == 0 ? INFINITY : i % 41 == 0 ? NAN : f[i];
    y[i] = to_t<T>(v);
  }
  return y;
}

// the gradient an activation passes where its clamped output is y (the kernels' bn_post::keeps)
static bool passes(double y, double cmax) { return !(y <= 0) && !(y >= cmax && cmax < INFINITY); }

// the channels-last partial sums (kind 0: statistics; kind 1: gradient sums; kinds 2, 3: the
// gradient masked by a relu6 / relu output, the masked values written out) in steps of V and of 1
template <class T, int V> void bn_rows(const char *name) {
  const int64_t C = 16 * V, M = 100;
  const int nk = 3;
  auto xf = randn(M * C, 2, 1), gf = randn(M * C);
  std::vector<T> x(M * C), g(M * C), y = clamp_outputs<T>(M * C);
  for (size_t i = 0; i < x.size(); i++) x[i] = to_t<T>(xf[i]), g[i] = to_t<T>(gf[i]);
  std::vector<double> mean(C);
  for (int64_t c = 0; c < C; c++) mean[c] = 0.25 * c;
  for (int kind = 0; kind < 4; kind++) {
    const T *gp = kind ? g.data() : nullptr;
    const double *mp = kind ? mean.data() : nullptr;
    double cmax = kind == 2 ? 6 : INFINITY;
    bn_post mk = {kind >= 2, false, 0.0, cmax};
    std::vector<double> pv(2 * C * nk, NAN), p1(2 * C * nk, NAN);
    std::vector<T> gmv(M * C, to_t<T>(NAN)), gm1(M * C, to_t<T>(NAN));
    emu_launch({(unsigned)((C / V + RW - 1) / RW), (unsigned)nk, 1}, {RW, RH, 1},
               [&] { bn_rows_partial<T, V>(x.data(), gp, C, M, mp, pv.data(), y.data(), gmv.data(), mk); });
    emu_launch({(unsigned)((C + RW - 1) / RW), (unsigned)nk, 1}, {RW, RH, 1},
               [&] { bn_rows_partial<T, 1>(x.data(), gp, C, M, mp, p1.data(), y.data(), gm1.data(), mk); });
    // and against the sums in double, chunk by chunk
    double err = 0;
    int64_t masked = 0, wrong = 0;
    for (int64_t c = 0; c < C; c++)
      for (int k = 0; k < nk; k++) {
        double a = 0, b = 0, K = kind ? mean[c] : ld(x[c]);
        for (int64_t j = M * k / nk; j < M * (k + 1) / nk; j++) {
          double d = ld(x[j * C + c]) - K, gv = ld(g[j * C + c]);
          if (kind >= 2) {
            if (!passes(ld(y[j * C + c]), cmax)) gv = 0, masked++;
            double got = ld(gmv[j * C + c]);
            wrong += !(got == gv);
          }
          a += kind ? gv : d;
          b += kind ? gv * d : d * d;
        }
        err = std::max({err, std::fabs(pv[2 * (c * nk + k)] - a), std::fabs(pv[2 * (c * nk + k) + 1] - b)});
      }
    char what[160];
    static const char *kinds[] = {"statistics", "gradient", "relu6-masked gradient", "relu-masked gradient"};
    snprintf(what, sizeof what, "batch norm %s channels-last %s sums, steps of %d (%lld of %lld masked, %lld written wrong)",
             name, kinds[kind], V, (long long)masked, (long long)(M * C), (long long)wrong);
    bool mask_ok = kind < 2 || (same_bits(gmv, gm1) && wrong == 0 && masked > 0 && masked < M * C);
    check(same_bits(pv, p1) && err < 1e-9 && mask_ok, "%s: the one-element kernel's bits, %.2e from the sums in double",
          err, what);
  }
}

// the planar gradient sums (bn_partial_grad), plain and masked by relu6's output, against sums in
// double; the masked gradient written out
template <class T> void bn_planes_grad(const char *name) {
  const int64_t N = 3, C = 4, S = 50, n = N * C * S, M = N * S;
  const int nk = 2;
  auto xf = randn(n, 2, 1), gf = randn(n);
  std::vector<T> x(n), g(n), y = clamp_outputs<T>(n);
  for (int64_t i = 0; i < n; i++) x[i] = to_t<T>(xf[i]), g[i] = to_t<T>(gf[i]);
  std::vector<double> mean(C);
  for (int64_t c = 0; c < C; c++) mean[c] = 0.5 - 0.25 * c;
  for (int masked_kind = 0; masked_kind < 2; masked_kind++) {
    bn_post mk = {masked_kind == 1, false, 0.0, 6.0};
    std::vector<double> part(2 * C * nk, NAN);
    std::vector<T> gm(n, to_t<T>(NAN));
    emu_launch({(unsigned)C, (unsigned)nk, 1}, {128, 1, 1},
               [&] { bn_partial_grad<T>(g.data(), x.data(), C, S, M, mean.data(), part.data(), y.data(), gm.data(), mk); });
    double err = 0;
    int64_t masked = 0, wrong = 0;
    for (int64_t c = 0; c < C; c++)
      for (int k = 0; k < nk; k++) {
        double a = 0, b = 0;
        for (int64_t j = M * k / nk; j < M * (k + 1) / nk; j++) {
          int64_t i = (j / S * C + c) * S + j % S;
          double gv = ld(g[i]);
          if (mk.on) {
            if (!passes(ld(y[i]), 6.0)) gv = 0, masked++;
            wrong += !(ld(gm[i]) == gv);
          }
          a += gv;
          b += gv * (ld(x[i]) - mean[c]);
        }
        double scale = 1 + std::fabs(a) + std::fabs(b);
        err = std::max({err, std::fabs(part[2 * (c * nk + k)] - a) / scale, std::fabs(part[2 * (c * nk + k) + 1] - b) / scale});
      }
    char what[160];
    snprintf(what, sizeof what, "batch norm %s planar %sgradient sums (%lld of %lld masked, %lld written wrong)", name,
             mk.on ? "relu6-masked " : "", (long long)masked, (long long)n, (long long)wrong);
    bool mask_ok = !mk.on || (wrong == 0 && masked > 0 && masked < n);
    check(err < 1e-12 && mask_ok, "%s: %.2e from the sums in double", err, what);
  }
}

// the elementwise passes (forward; forward with the post-operation: a residual sum and relu6,
// relu alone; input gradient with and without the gradient sums' coefficients) over rows of
// channels and over planes, in steps of V and of 1
template <class T, int V> void bn_lines_check(const char *name) {
  for (int rows = 0; rows < 2; rows++) {
    const int64_t N = 6, C = rows ? 2 * V : 5, S = rows ? 1 : 4 * V, n = N * C * S;
    const int64_t outer = rows ? N : N * C, inner = rows ? C : S;
    auto xf = randn(n, 2, 1), gf = randn(n, 3);
    std::vector<T> x(n), g(n);
    for (int64_t i = 0; i < n; i++) x[i] = to_t<T>(xf[i]), g[i] = to_t<T>(gf[i]);
    auto wf = randn(C), bf = randn(C);
    std::vector<double> mean(C), invstd(C), coef(3 * C);
    for (int64_t c = 0; c < C; c++) {
      mean[c] = 0.1 * c - 0.2;
      invstd[c] = 1 + 0.05 * c;
      coef[3 * c] = 0.5 + c, coef[3 * c + 1] = 0.01 * c, coef[3 * c + 2] = -0.3;
    }
    // pass 0: forward; 1: gradient with coef; 2: gradient without; 3: forward + g, relu6; 4: forward, relu
    for (int pass = 0; pass < 5; pass++) {
      bool grad = pass == 1 || pass == 2;
      bn_coefs cf = {mean.data(), invstd.data(), pass == 1 ? coef.data() : nullptr};
      bn_post post = {pass >= 3, pass == 3, pass >= 3 ? 0.0 : -INFINITY, pass == 3 ? 6.0 : INFINITY};
      const T *second = grad || pass == 3 ? g.data() : x.data();
      std::vector<T> ov(n), o1(n);
      auto run = [&](std::vector<T> &out, bool vec) {
        emu_launch({2, 1, 1}, {256, 1, 1}, [&] {
          if (!grad && vec) bn_lines<T, float, V, false>(x.data(), second, out.data(), outer, inner, C, rows, cf, wf.data(), bf.data(), post);
          else if (!grad) bn_lines<T, float, 1, false>(x.data(), second, out.data(), outer, inner, C, rows, cf, wf.data(), bf.data(), post);
          else if (vec) bn_lines<T, float, V, true>(x.data(), g.data(), out.data(), outer, inner, C, rows, cf, wf.data(), nullptr, bn_post{});
          else bn_lines<T, float, 1, true>(x.data(), g.data(), out.data(), outer, inner, C, rows, cf, wf.data(), nullptr, bn_post{});
        });
      };
      run(ov, true);
      run(o1, false);
      double err = 0, scale = 1e-30;
      int64_t clamped = 0;
      for (int64_t i = 0; i < n; i++) {
        int64_t c = rows ? i % C : (i / S) % C;
        double want;
        if (pass == 1) {
          want = coef[3 * c] * ld(g[i]) - coef[3 * c + 1] * ld(x[i]) + coef[3 * c + 2];
        } else if (pass == 2) {
          want = wf[c] * invstd[c] * ld(g[i]);
        } else {
          double sc = wf[c] * invstd[c];
          want = ld(x[i]) * sc + (bf[c] - mean[c] * sc);
          if (pass == 3) want = std::min(std::max(want + ld(g[i]), 0.0), 6.0);
          if (pass == 4) want = std::max(want, 0.0);
          clamped += pass >= 3 && (want == 0.0 || want == 6.0);
        }
        err = std::max(err, std::fabs(ld(ov[i]) - want));
        scale = std::max(scale, std::fabs(want));
      }
      char what[160];
      static const char *passes[] = {"forward", "input gradient", "eval-mode input gradient",
                                     "forward + residual, relu6", "forward, relu"};
      snprintf(what, sizeof what, "batch norm %s %s %s, steps of %d (%lld of %lld clamped)", name,
               rows ? "rows" : "planes", passes[pass], V, (long long)clamped, (long long)n);
      double tol = sizeof(T) == 2 ? 1e-2 : sizeof(T) == 4 ? 1e-6 : 1e-14;
      // the post-operation's cases must reach both of its sides
      bool both = pass < 3 || (clamped > 0 && clamped < n);
      check(same_bits(ov, o1) && err / scale < tol && both, "%s: the one-element kernel's bits, %.2e from the formula",
            err / scale, what);
    }
  }
}

int main() {
  for (int64_t D : {1, 31, 33, 128, 129, 384, 513, 1024}) layer_norm(D);
  bn_rows<float, 4>("f32");
  bn_rows<double, 2>("f64");
  bn_rows<bf16_bits, 8>("bf16");
  bn_planes_grad<float>("f32");
  bn_planes_grad<double>("f64");
  bn_planes_grad<bf16_bits>("bf16");
  bn_lines_check<float, 4>("f32");
  bn_lines_check<double, 2>("f64");
  bn_lines_check<bf16_bits, 8>("bf16");
  printf("%s\n", all_ok ? "all checks passed" : "some checks failed");
  return all_ok ? 0 : 1;
}
