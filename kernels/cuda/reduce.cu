// CUDA reductions over a contiguous x viewed as (A, R, B): each of the A*B outputs reduces R
// elements spaced B apart. Partial results are states combined in a fixed order, so a
// reduction gives the same bits on every run; sums accumulate in double as the CPU's do.
//
// Three shapes of work: a block per output (R split over up to `nsplit` blocks when there
// are few outputs, the partial states then combined by a second kernel), or a thread per
// output when there are many outputs laid side by side (B > 1: neighbouring threads read
// neighbouring columns).
#include <math.h>
#include "common.cuh"

namespace {

// The running state of one reduction. Floats: a = sum / product / extreme / mean / max of
// logsumexp, b = M2 of var or the exp-sum of logsumexp, i = index of the extreme, n = count
// (0 = no element yet). Integers (i64 input): v = value.
struct rstate {
  double a, b;
  int64_t v, i, n;
};

struct rparams {
  int op;       // vtl_reduce_op
  int integer;  // x is i64 (else f32 or f64 in xdt)
  int xdt;      // dtype of x
  int odt;      // dtype of out
  double param; // p of norm, correction of var
  int64_t R, B;
};

__device__ __forceinline__ bool want_max(int op) { return op == VTL_RED_MAX || op == VTL_RED_ARGMAX; }
__device__ __forceinline__ bool is_extreme(int op) {
  return op == VTL_RED_MAX || op == VTL_RED_MIN || op == VTL_RED_ARGMAX || op == VTL_RED_ARGMIN;
}

__device__ __forceinline__ rstate rinit(const rparams &p) {
  rstate s;
  s.a = 0; s.b = 0; s.v = 0; s.i = 0; s.n = 0;
  if (p.integer) {
    if (p.op == VTL_RED_PROD || p.op == VTL_RED_ALL) s.v = 1;
  } else {
    if (p.op == VTL_RED_PROD || p.op == VTL_RED_ALL) s.a = 1;
    if (p.op == VTL_RED_LOGSUMEXP) s.a = -INFINITY;
  }
  return s;
}

// adds element k (value x) to state s; elements reach one state in increasing k
__device__ __forceinline__ void radd_float(rstate &s, const rparams &p, double x, int64_t k) {
  switch (p.op) {
  case VTL_RED_SUM: case VTL_RED_MEAN: s.a += x; break;
  case VTL_RED_PROD: s.a *= x; break;
  case VTL_RED_MAX: case VTL_RED_MIN: case VTL_RED_ARGMAX: case VTL_RED_ARGMIN:
    if (!s.n) { s.a = x; s.i = k; s.n = 1; }
    else if (s.a == s.a && (x != x || (want_max(p.op) ? x > s.a : x < s.a))) { s.a = x; s.i = k; }
    break;
  case VTL_RED_VAR: { // Welford
    s.n++;
    double d = x - s.a;
    s.a += d / (double)s.n;
    s.b += d * (x - s.a);
    break;
  }
  case VTL_RED_NORM: {
    double ax = fabs(x);
    if (isinf(p.param)) { if (ax > s.a || ax != ax) s.a = ax; }
    else if (p.param == 0) s.a += x != 0;
    else if (p.param == 1) s.a += ax;
    else if (p.param == 2) s.a += x * x;
    else s.a += pow(ax, p.param);
    break;
  }
  case VTL_RED_LOGSUMEXP:
    if (s.a != s.a) break;
    if (x != x) { s.a = x; break; }
    if (x == -INFINITY) break;
    if (x > s.a) { s.b = s.b * exp(s.a - x) + 1; s.a = x; }
    else s.b += exp(x - s.a);
    break;
  case VTL_RED_ANY: if (x != 0) s.a = 1; break;
  case VTL_RED_ALL: if (x == 0) s.a = 0; break;
  default: break;
  }
}

__device__ __forceinline__ void radd_int(rstate &s, const rparams &p, int64_t x, int64_t k) {
  switch (p.op) {
  case VTL_RED_SUM: s.v = (int64_t)((uint64_t)s.v + (uint64_t)x); break;
  case VTL_RED_PROD: s.v = (int64_t)((uint64_t)s.v * (uint64_t)x); break;
  case VTL_RED_MAX: case VTL_RED_MIN: case VTL_RED_ARGMAX: case VTL_RED_ARGMIN:
    if (!s.n || (want_max(p.op) ? x > s.v : x < s.v)) { s.v = x; s.i = k; s.n = 1; }
    break;
  case VTL_RED_ANY: if (x != 0) s.v = 1; break;
  case VTL_RED_ALL: if (x == 0) s.v = 0; break;
  default: break;
  }
}

// s = combine(s, t); for extremes the first occurrence (lowest index) wins ties, and NaN wins
__device__ __forceinline__ void rcombine(rstate &s, const rstate &t, const rparams &p) {
  if (is_extreme(p.op)) {
    if (!t.n) return;
    if (!s.n) { s = t; return; }
    if (p.integer) {
      bool better = want_max(p.op) ? t.v > s.v : t.v < s.v;
      if (better || (t.v == s.v && t.i < s.i)) s = t;
      return;
    }
    bool sn = s.a != s.a, tn = t.a != t.a;
    if (sn || tn) {
      if (tn && (!sn || t.i < s.i)) s = t;
      return;
    }
    bool better = want_max(p.op) ? t.a > s.a : t.a < s.a;
    if (better || (t.a == s.a && t.i < s.i)) s = t;
    return;
  }
  if (p.integer) {
    switch (p.op) {
    case VTL_RED_SUM: s.v = (int64_t)((uint64_t)s.v + (uint64_t)t.v); break;
    case VTL_RED_PROD: s.v = (int64_t)((uint64_t)s.v * (uint64_t)t.v); break;
    case VTL_RED_ANY: s.v = s.v || t.v; break;
    case VTL_RED_ALL: s.v = s.v && t.v; break;
    default: break;
    }
    return;
  }
  switch (p.op) {
  case VTL_RED_SUM: case VTL_RED_MEAN: s.a += t.a; break;
  case VTL_RED_PROD: s.a *= t.a; break;
  case VTL_RED_VAR: { // Chan et al.
    if (!t.n) break;
    if (!s.n) { s = t; break; }
    double n = (double)(s.n + t.n), d = t.a - s.a;
    s.b = s.b + t.b + d * d * (double)s.n * (double)t.n / n;
    s.a = s.a + d * (double)t.n / n;
    s.n += t.n;
    break;
  }
  case VTL_RED_NORM:
    if (isinf(p.param)) { if (t.a > s.a || t.a != t.a) s.a = s.a != s.a ? s.a : t.a; }
    else s.a += t.a;
    break;
  case VTL_RED_LOGSUMEXP: {
    if (s.a != s.a) break;
    if (t.a != t.a) { s.a = t.a; break; }
    double m = s.a > t.a ? s.a : t.a;
    if (m == -INFINITY) break;
    if (isinf(m)) { s.a = m; break; }
    s.b = s.b * exp(s.a - m) + t.b * exp(t.a - m);
    s.a = m;
    break;
  }
  case VTL_RED_ANY: s.a = (s.a != 0 || t.a != 0) ? 1 : 0; break;
  case VTL_RED_ALL: s.a = (s.a != 0 && t.a != 0) ? 1 : 0; break;
  default: break;
  }
}

// writes output o (and its index) from the final state
__device__ __forceinline__ void rfinish(const rstate &s, const rparams &p, char *out, int64_t *idx, int64_t o) {
  size_t os = (size_t)cu_dtype_size(p.odt);
  char *dst = out + o * (int64_t)os;
  bool is_arg = p.op == VTL_RED_ARGMAX || p.op == VTL_RED_ARGMIN;
  if (idx) idx[o] = s.i;
  if (is_arg) { *(int64_t *)dst = s.i; return; }
  if (p.integer) {
    if (p.odt == VTL_I64) *(int64_t *)dst = s.v;
    else cu_store_double(dst, p.odt, (double)s.v);
    return;
  }
  double r = s.a;
  switch (p.op) {
  case VTL_RED_MEAN: r = p.R ? s.a / (double)p.R : NAN; break;
  case VTL_RED_VAR: {
    double dof = (double)p.R - p.param;
    r = p.R ? s.b / (dof > 0 ? dof : 0) : NAN;
    break;
  }
  case VTL_RED_NORM:
    if (isinf(p.param) || p.param == 0 || p.param == 1) r = s.a;
    else if (p.param == 2) r = sqrt(s.a);
    else r = pow(s.a, 1.0 / p.param);
    break;
  case VTL_RED_LOGSUMEXP: r = (s.a != s.a || isinf(s.a)) ? s.a : s.a + log(s.b); break;
  default: break;
  }
  cu_store_double(dst, p.odt, r);
}

__device__ __forceinline__ void radd(rstate &s, const rparams &p, const char *x, int64_t pos, int64_t k) {
  if (p.integer) radd_int(s, p, ((const int64_t *)x)[pos], k);
  else radd_float(s, p, p.xdt == VTL_F32 ? (double)((const float *)x)[pos] : ((const double *)x)[pos], k);
}

#define THREADS 256

// tree-combines the block's states in shared memory; the result lands in sh[0]
__device__ void block_combine(rstate *sh, const rparams &p) {
  for (int w = THREADS / 2; w > 0; w /= 2) {
    __syncthreads();
    if ((int)threadIdx.x < w) rcombine(sh[threadIdx.x], sh[threadIdx.x + w], p);
  }
  __syncthreads();
}

// grid (outputs, nsplit): block (o, s) reduces elements [s*chunk, min(R, (s+1)*chunk)) of
// output o; with one split it writes the output, otherwise its partial state
__global__ void reduce_block_kernel(rparams p, const char *x, char *out, int64_t *idx, rstate *partial, int64_t chunk) {
  __shared__ rstate sh[THREADS];
  int64_t o = blockIdx.x, a = o / p.B, b = o - a * p.B;
  int64_t k0 = (int64_t)blockIdx.y * chunk, k1 = k0 + chunk < p.R ? k0 + chunk : p.R;
  rstate s = rinit(p);
  int64_t base = a * p.R * p.B + b;
  for (int64_t k = k0 + threadIdx.x; k < k1; k += THREADS) radd(s, p, x, base + k * p.B, k);
  sh[threadIdx.x] = s;
  block_combine(sh, p);
  if (threadIdx.x == 0) {
    if (gridDim.y == 1) rfinish(sh[0], p, out, idx, o);
    else partial[o * gridDim.y + blockIdx.y] = sh[0];
  }
}

// one block per output: combines its nsplit partial states in order
__global__ void reduce_partials_kernel(rparams p, const rstate *partial, int nsplit, char *out, int64_t *idx) {
  __shared__ rstate sh[THREADS];
  int64_t o = blockIdx.x;
  rstate s = rinit(p);
  for (int j = threadIdx.x; j < nsplit; j += THREADS) rcombine(s, partial[o * nsplit + j], p);
  sh[threadIdx.x] = s;
  block_combine(sh, p);
  if (threadIdx.x == 0) rfinish(sh[0], p, out, idx, o);
}

// a thread per output
__global__ void reduce_thread_kernel(rparams p, const char *x, char *out, int64_t *idx, int64_t nout) {
  for (int64_t o = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; o < nout; o += (int64_t)gridDim.x * blockDim.x) {
    int64_t a = o / p.B, b = o - a * p.B, base = a * p.R * p.B + b;
    rstate s = rinit(p);
    for (int64_t k = 0; k < p.R; k++) radd(s, p, x, base + k * p.B, k);
    rfinish(s, p, out, idx, o);
  }
}

} // namespace

vtl_status vtl_cu_reduce(vtl_reduce_op op, vtl_tensor *out, vtl_tensor *idx, const vtl_tensor *x, int64_t A, int64_t R,
                         int64_t B, double param) {
  if (x->dtype != VTL_F32 && x->dtype != VTL_F64 && x->dtype != VTL_I64)
    return vtl_error_set(VTL_ERR_ARG, "reduce: kernel expects f32, f64 or i64, got %s", vtl_dtype_name(x->dtype));
  int dev = vtl_cu_device(out);
  cudaStream_t st = vtl_cu_stream(dev);
  if (!st) return vtl_error_status();
  int64_t nout = A * B;
  if (nout == 0) return VTL_OK;
  rparams p;
  p.op = op;
  p.integer = x->dtype == VTL_I64;
  p.xdt = x->dtype;
  p.odt = out->dtype;
  p.param = param;
  p.R = R;
  p.B = B;
  const char *xp = (const char *)vtl_tensor_data(x);
  char *op_ = (char *)vtl_tensor_data(out);
  int64_t *ip = idx ? (int64_t *)vtl_tensor_data(idx) : nullptr;
  if (B > 1 && nout >= 4096) {
    reduce_thread_kernel<<<vtl_cu_blocks(nout), THREADS, 0, st>>>(p, xp, op_, ip, nout);
    VTL_CU_LAUNCHED("reduce");
    return VTL_OK;
  }
  if (nout > 0x7fffffff) return vtl_error_set(VTL_ERR_ARG, "reduce: too many outputs (%lld)", (long long)nout);
  // few outputs over long rows: split each row over several blocks, about 2048 blocks in all
  int64_t nsplit = 1;
  if (nout < 1024 && R >= 16384) {
    nsplit = 2048 / nout;
    int64_t most = (R + 4095) / 4096;
    if (nsplit > most) nsplit = most;
    if (nsplit < 1) nsplit = 1;
  }
  int64_t chunk = (R + nsplit - 1) / nsplit;
  if (chunk == 0) chunk = 1;
  nsplit = R ? (R + chunk - 1) / chunk : 1;
  dim3 grid((unsigned)nout, (unsigned)nsplit);
  if (nsplit == 1) {
    reduce_block_kernel<<<grid, THREADS, 0, st>>>(p, xp, op_, ip, nullptr, chunk);
    VTL_CU_LAUNCHED("reduce");
    return VTL_OK;
  }
  size_t pbytes = (size_t)(nout * nsplit) * sizeof(rstate);
  rstate *partial = (rstate *)vtl_cu_alloc(pbytes, dev);
  if (!partial) return vtl_error_set(VTL_ERR_OOM, "reduce: out of memory on cuda:%d for %zu bytes of partial results", dev, pbytes);
  reduce_block_kernel<<<grid, THREADS, 0, st>>>(p, xp, op_, ip, partial, chunk);
  cudaError_t e = cudaGetLastError();
  if (e == cudaSuccess) {
    reduce_partials_kernel<<<(unsigned)nout, THREADS, 0, st>>>(p, partial, (int)nsplit, op_, ip);
    e = cudaGetLastError();
  }
  vtl_cu_free(partial, pbytes, dev); // stream-ordered: reused only by later work on this stream
  return e == cudaSuccess ? VTL_OK : vtl_cu_error(e, "reduce");
}
