/* Fused optimizer steps over contiguous f32 tensors: one pass per parameter, rounding each
   intermediate exactly as PyTorch's single-tensor CPU path does (scalars rounded to f32,
   add-with-alpha and addcmul as one fused multiply-add), so results match it bit for bit. */
#include <math.h>
#include <omp.h>
#include "iter.h"
#include "backend.h"

/* p, g, buf: (n); buf may be NULL when momentum is 0. first: buf takes d as is. */
void vtl_cpu_sgd_step(float *p, const float *g, float *buf, int64_t n, double lr, double momentum, double dampening,
                      double wd, int nesterov, int maximize, int first) {
  const float wd_f = (float)wd, mom_f = (float)momentum, damp1_f = (float)(1 - dampening), nlr_f = (float)-lr;
  int nt = n >= 4 * VTL_GRAIN && !omp_in_parallel() ? omp_get_max_threads() : 1;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t i = 0; i < n; i++) {
    float d = maximize ? -g[i] : g[i];
    if (wd != 0) d = fmaf(wd_f, p[i], d);
    if (momentum != 0) {
      float b = first ? d : fmaf(damp1_f, d, buf[i] * mom_f);
      buf[i] = b;
      d = nesterov ? fmaf(mom_f, b, d) : b;
    }
    p[i] = fmaf(nlr_f, d, p[i]);
  }
}

/* Adam / AdamW (decoupled) step `step` (1-based); vmax used when amsgrad. */
void vtl_cpu_adam_step(float *p, const float *g, float *m, float *v, float *vmax, int64_t n, double lr, double beta1,
                       double beta2, double eps, double wd, int decoupled, int64_t step, int maximize) {
  const float b1 = (float)beta1, b2 = (float)beta2, c1 = (float)(1 - beta1), c2 = (float)(1 - beta2);
  const float decay = (float)(1 - lr * wd), wd_f = (float)wd, eps_f = (float)eps;
  const float bc2 = (float)sqrt(1 - pow(beta2, (double)step));
  const float nstep = (float)-(lr / (1 - pow(beta1, (double)step)));
  int nt = n >= 4 * VTL_GRAIN && !omp_in_parallel() ? omp_get_max_threads() : 1;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t i = 0; i < n; i++) {
    float gi = maximize ? -g[i] : g[i], pi = p[i];
    if (decoupled && wd != 0) pi = pi * decay;
    if (!decoupled && wd != 0) gi = fmaf(wd_f, pi, gi);
    float mi = fmaf(c1, gi, m[i] * b1);
    float vi = fmaf(c2 * gi, gi, v[i] * b2);
    m[i] = mi;
    v[i] = vi;
    float second = vi;
    if (vmax) {
      float a = vmax[i];
      second = (a != a || vi != vi) ? a + vi : (a > vi ? a : vi);
      vmax[i] = second;
    }
    float denom = sqrtf(second);
    denom = denom / bc2;
    denom = denom + eps_f;
    p[i] = pi + (nstep * mi) / denom;
  }
}
