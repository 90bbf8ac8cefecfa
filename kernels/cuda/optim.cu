// Fused optimizer steps over many f32 parameters of one device: each launch takes up to
// OPTIM_BATCH parameters (their pointers and sizes passed in the kernel's arguments) and every
// thread walks each of them with a grid stride, so a network's update is a handful of launches
// instead of several per parameter. The arithmetic is the CPU kernels' (kernels/cpu/optim.c):
// the same f32 scalars, fused multiply-adds where they fuse and correctly rounded products,
// quotients and square roots elsewhere (the _rn intrinsics keep nvcc from contracting), so a
// step gives the CPU's bits.
#include <math.h>
#include "common.cuh"

namespace {

constexpr int OPTIM_BATCH = 32;

struct optim_batch {
  vtl_optim_item it[OPTIM_BATCH];
  int n;
};

struct sgd_args {
  float wd, mom, damp1, nlr;
  bool has_wd, has_mom, nesterov, maximize;
};

struct adam_args {
  float b1, b2, c1, c2, decay, wd, eps;
  bool has_wd, decoupled, maximize;
  float nstep[OPTIM_BATCH], bc2[OPTIM_BATCH]; // per parameter: its own step count
};

__global__ void sgd_multi(optim_batch b, sgd_args a) {
  for (int t = 0; t < b.n; t++) {
    const vtl_optim_item x = b.it[t];
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < x.n; i += (int64_t)gridDim.x * blockDim.x) {
      float d = a.maximize ? -x.g[i] : x.g[i];
      if (a.has_wd) d = __fmaf_rn(a.wd, x.p[i], d);
      if (a.has_mom) {
        float bv = x.first ? d : __fmaf_rn(a.damp1, d, __fmul_rn(x.a[i], a.mom));
        x.a[i] = bv;
        d = a.nesterov ? __fmaf_rn(a.mom, bv, d) : bv;
      }
      x.p[i] = __fmaf_rn(a.nlr, d, x.p[i]);
    }
  }
}

__global__ void adam_multi(optim_batch b, adam_args a) {
  for (int t = 0; t < b.n; t++) {
    const vtl_optim_item x = b.it[t];
    float nstep = a.nstep[t], bc2 = a.bc2[t];
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < x.n; i += (int64_t)gridDim.x * blockDim.x) {
      float gi = a.maximize ? -x.g[i] : x.g[i], pi = x.p[i];
      if (a.decoupled && a.has_wd) pi = __fmul_rn(pi, a.decay);
      if (!a.decoupled && a.has_wd) gi = __fmaf_rn(a.wd, pi, gi);
      float mi = __fmaf_rn(a.c1, gi, __fmul_rn(x.a[i], a.b1));
      float vi = __fmaf_rn(__fmul_rn(a.c2, gi), gi, __fmul_rn(x.b[i], a.b2));
      x.a[i] = mi;
      x.b[i] = vi;
      float second = vi;
      if (x.c) {
        float m = x.c[i];
        second = (m != m || vi != vi) ? __fadd_rn(m, vi) : (m > vi ? m : vi);
        x.c[i] = second;
      }
      float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(second), bc2), a.eps);
      x.p[i] = __fadd_rn(pi, __fdiv_rn(__fmul_rn(nstep, mi), denom));
    }
  }
}

} // namespace

vtl_status vtl_cu_optim_multi(const vtl_optim_step *st, const vtl_optim_item *items, int n, int dev) {
  cudaStream_t s = vtl_cu_stream(dev);
  if (!s) return vtl_error_status();
  for (int k0 = 0; k0 < n; k0 += OPTIM_BATCH) {
    optim_batch b;
    b.n = n - k0 < OPTIM_BATCH ? n - k0 : OPTIM_BATCH;
    int64_t most = 1;
    for (int t = 0; t < b.n; t++) {
      b.it[t] = items[k0 + t];
      if (b.it[t].n > most) most = b.it[t].n;
    }
    unsigned blocks = vtl_cu_blocks(most);
    if (blocks > 1024) blocks = 1024;
    if (st->kind == VTL_OPTIM_SGD) {
      sgd_args a = {(float)st->weight_decay, (float)st->momentum, (float)(1 - st->dampening), (float)-st->lr,
                    st->weight_decay != 0, st->momentum != 0, st->nesterov, st->maximize};
      sgd_multi<<<blocks, 256, 0, s>>>(b, a);
    } else {
      adam_args a;
      a.b1 = (float)st->beta1;
      a.b2 = (float)st->beta2;
      a.c1 = (float)(1 - st->beta1);
      a.c2 = (float)(1 - st->beta2);
      a.decay = (float)(1 - st->lr * st->weight_decay);
      a.wd = (float)st->weight_decay;
      a.eps = (float)st->eps;
      a.has_wd = st->weight_decay != 0;
      a.decoupled = st->decoupled;
      a.maximize = st->maximize;
      for (int t = 0; t < b.n; t++) {
        double step = (double)b.it[t].step;
        a.bc2[t] = (float)sqrt(1 - pow(st->beta2, step));
        a.nstep[t] = (float)-(st->lr / (1 - pow(st->beta1, step)));
      }
      adam_multi<<<blocks, 256, 0, s>>>(b, a);
    }
    VTL_CU_LAUNCHED("optimizer step");
  }
  return VTL_OK;
}
