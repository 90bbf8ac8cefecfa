// CUDA reductions over a contiguous x viewed as (A, R, B): each of the A*B outputs reduces R
// elements spaced B apart. Partial results are states combined in a fixed order, so a
// reduction gives the same bits on every run; sums accumulate in double as the CPU's do.
//
// Three shapes of work, chosen from the shape alone (never from the device, so the bits do
// not depend on it either):
// - rows (B == 1): a row is read by 32 to 256 lanes with 16-byte loads when every row start
//   is aligned; few long rows are split over grid.y, the partial states then combined in
//   order by a second kernel;
// - columns (B > 1): a block covers up to 32 neighbouring columns with 8 or more row groups
//   (a warp reads whole lines of a row), the groups' states combined in shared memory;
//   R is split over grid.y when there are few columns, as above;
// - short reductions (R <= 16, or narrow columns too short for a column block when there
//   are many outputs): a thread per output.
// Sums, means and extremes run kernels compiled for them; the other ops share one kernel
// that reads the op at run time.
#include <type_traits>
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

// The state functions take the op apart from p: kernels compiled for one op pass a constant
// (VTL_RED_SUM standing for mean too, VTL_RED_MAX and VTL_RED_MIN for argmax and argmin, which
// add and combine alike), the others p.op.

// adds element k (value x) to state s; elements reach one state in increasing k
__device__ __forceinline__ void radd_float(rstate &s, const rparams &p, int op, double x, int64_t k) {
  switch (op) {
  case VTL_RED_SUM: case VTL_RED_MEAN: s.a += x; break;
  case VTL_RED_PROD: s.a *= x; break;
  case VTL_RED_MAX: case VTL_RED_MIN: case VTL_RED_ARGMAX: case VTL_RED_ARGMIN:
    if (!s.n) { s.a = x; s.i = k; s.n = 1; }
    else if (s.a == s.a && (x != x || (want_max(op) ? x > s.a : x < s.a))) { s.a = x; s.i = k; }
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

__device__ __forceinline__ void radd_int(rstate &s, int op, int64_t x, int64_t k) {
  switch (op) {
  case VTL_RED_SUM: s.v = (int64_t)((uint64_t)s.v + (uint64_t)x); break;
  case VTL_RED_PROD: s.v = (int64_t)((uint64_t)s.v * (uint64_t)x); break;
  case VTL_RED_MAX: case VTL_RED_MIN: case VTL_RED_ARGMAX: case VTL_RED_ARGMIN:
    if (!s.n || (want_max(op) ? x > s.v : x < s.v)) { s.v = x; s.i = k; s.n = 1; }
    break;
  case VTL_RED_ANY: if (x != 0) s.v = 1; break;
  case VTL_RED_ALL: if (x == 0) s.v = 0; break;
  default: break;
  }
}

// s = combine(s, t); for extremes the first occurrence (lowest index) wins ties, and NaN wins
__device__ __forceinline__ void rcombine(rstate &s, const rstate &t, const rparams &p, int op) {
  if (is_extreme(op)) {
    if (!t.n) return;
    if (!s.n) { s = t; return; }
    if (p.integer) {
      bool better = want_max(op) ? t.v > s.v : t.v < s.v;
      if (better || (t.v == s.v && t.i < s.i)) s = t;
      return;
    }
    bool sn = s.a != s.a, tn = t.a != t.a;
    if (sn || tn) {
      if (tn && (!sn || t.i < s.i)) s = t;
      return;
    }
    bool better = want_max(op) ? t.a > s.a : t.a < s.a;
    if (better || (t.a == s.a && t.i < s.i)) s = t;
    return;
  }
  if (p.integer) {
    switch (op) {
    case VTL_RED_SUM: s.v = (int64_t)((uint64_t)s.v + (uint64_t)t.v); break;
    case VTL_RED_PROD: s.v = (int64_t)((uint64_t)s.v * (uint64_t)t.v); break;
    case VTL_RED_ANY: s.v = s.v || t.v; break;
    case VTL_RED_ALL: s.v = s.v && t.v; break;
    default: break;
    }
    return;
  }
  switch (op) {
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
  if (p.integer) radd_int(s, p.op, ((const int64_t *)x)[pos], k);
  else radd_float(s, p, p.op, p.xdt == VTL_F32 ? (double)((const float *)x)[pos] : ((const double *)x)[pos], k);
}

// element k of type T (float, double or int64_t) added to s
template <class T> __device__ __forceinline__ void radd_t(rstate &s, const rparams &p, int op, T x, int64_t k) {
  if constexpr (std::is_same<T, int64_t>::value) radd_int(s, op, x, k);
  else radd_float(s, p, op, (double)x, k);
}

#define THREADS 256
#define ANY_OP (-1)     // a kernel that reads the op from its parameters
#define TARGET_BLOCKS 1024 // blocks a split reduction aims for (about 8 per multiprocessor)

// one lane's state combined with the lane `off` above it (all 32 lanes take part)
__device__ __forceinline__ rstate shfl_down(const rstate &s, int off) {
  rstate t;
  t.a = __shfl_down_sync(0xffffffffu, s.a, off);
  t.b = __shfl_down_sync(0xffffffffu, s.b, off);
  t.v = (int64_t)__shfl_down_sync(0xffffffffu, (long long)s.v, off);
  t.i = (int64_t)__shfl_down_sync(0xffffffffu, (long long)s.i, off);
  t.n = (int64_t)__shfl_down_sync(0xffffffffu, (long long)s.n, off);
  return t;
}

// tree-combines the states of a warp's 32 lanes (lane j with lane j + off, off = 16, 8, .., 1);
// the result lands in lane 0
__device__ __forceinline__ void warp_combine(rstate &s, const rparams &p, int op) {
  int lane = threadIdx.x & 31;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    rstate t = shfl_down(s, off);
    if (lane + off < 32) rcombine(s, t, p, op);
  }
}

// tree-combines the block's states in shared memory; the result lands in sh[0]
__device__ void block_combine(rstate *sh, const rparams &p) {
  for (int w = THREADS / 2; w > 0; w /= 2) {
    __syncthreads();
    if ((int)threadIdx.x < w) rcombine(sh[threadIdx.x], sh[threadIdx.x + w], p, p.op);
  }
  __syncthreads();
}

// V elements from p (16 bytes, aligned, when V > 1)
template <class T, int V> __device__ __forceinline__ void vload(T *e, const T *p) {
  if constexpr (V > 1) {
    static_assert(V * sizeof(T) == 16, "a vector is 16 bytes");
    uint4 u = __ldg((const uint4 *)p);
    memcpy(e, &u, 16);
  } else {
    e[0] = p[0];
  }
}

// Rows (B == 1): 2^lanes_log2 lanes (32 to 256) per row, THREADS >> lanes_log2 rows per
// block, grid (row blocks, nsplit). Block (x, y) reduces elements [y*chunk, min(R, (y+1)*chunk))
// of its rows; chunk is a multiple of V, and with V > 1 every row start is 16-byte aligned.
// Lane l adds vectors l, l+L, l+2L, .. then, when the range is not whole vectors, element
// l of the tail; lanes then warps are combined in a fixed order. With one split the output is
// written, otherwise the partial state of (row, split).
template <class T, int V, int OP>
__global__ void __launch_bounds__(THREADS)
reduce_row_kernel(rparams p, const T *__restrict__ x, int64_t rows, char *out, int64_t *idx, rstate *partial,
                  int64_t chunk, int lanes_log2) {
  const int op = OP == ANY_OP ? p.op : OP;
  const int L = 1 << lanes_log2, lane = threadIdx.x & (L - 1);
  const int64_t r = (int64_t)blockIdx.x * (THREADS >> lanes_log2) + (threadIdx.x >> lanes_log2);
  rstate s = rinit(p);
  if (r < rows) {
    const int64_t k0 = (int64_t)blockIdx.y * chunk, k1 = k0 + chunk < p.R ? k0 + chunk : p.R;
    const int64_t nv = k1 > k0 ? (k1 - k0) / V : 0;
    const T *seg = x + r * p.R + k0;
    int64_t v = lane;
    for (; v + L < nv; v += 2 * (int64_t)L) { // two vectors in flight per lane
      T e0[V], e1[V];
      vload<T, V>(e0, seg + v * V);
      vload<T, V>(e1, seg + (v + L) * V);
#pragma unroll
      for (int j = 0; j < V; j++) radd_t<T>(s, p, op, e0[j], k0 + v * V + j);
#pragma unroll
      for (int j = 0; j < V; j++) radd_t<T>(s, p, op, e1[j], k0 + (v + L) * V + j);
    }
    if (v < nv) {
      T e0[V];
      vload<T, V>(e0, seg + v * V);
#pragma unroll
      for (int j = 0; j < V; j++) radd_t<T>(s, p, op, e0[j], k0 + v * V + j);
    }
    const int64_t kt = k0 + nv * V + lane; // the tail: fewer than V elements
    if (kt < k1) radd_t<T>(s, p, op, x[r * p.R + kt], kt);
  }
  warp_combine(s, p, op);
  if (L > 32) { // the row's warps, first to last
    __shared__ rstate sh[THREADS / 32];
    if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = s;
    __syncthreads();
    if (lane == 0) {
      const int w0 = threadIdx.x >> 5;
      for (int w = 1; w < (L >> 5); w++) rcombine(s, sh[w0 + w], p, op);
    }
  }
  if (lane == 0 && r < rows) {
    if (gridDim.y == 1) rfinish(s, p, out, idx, r);
    else partial[r * gridDim.y + blockIdx.y] = s;
  }
}

// Columns (B > 1): a block is 2^cols_log2 (2 to 32) neighbouring columns of one a times
// THREADS >> cols_log2 row groups; grid (A * colblocks, nsplit). Group g adds rows k0+g,
// k0+g+G, .. of [k0, k1) (k0 = y*chunk) in increasing order, four loads in flight; the groups
// are then tree-combined in shared memory. With one split the output is written, otherwise
// the partial state of (output, split).
template <class T, int OP>
__global__ void __launch_bounds__(THREADS)
reduce_col_kernel(rparams p, const T *__restrict__ x, char *out, int64_t *idx, rstate *partial, int64_t chunk,
                  int cols_log2, int64_t colblocks) {
  const int op = OP == ANY_OP ? p.op : OP;
  const int bx = 1 << cols_log2, G = THREADS >> cols_log2;
  const int tx = threadIdx.x & (bx - 1), g = threadIdx.x >> cols_log2;
  const int64_t a = blockIdx.x / colblocks, b = (blockIdx.x - a * colblocks) * bx + tx, B = p.B;
  const int64_t k0 = (int64_t)blockIdx.y * chunk, k1 = k0 + chunk < p.R ? k0 + chunk : p.R;
  rstate s = rinit(p);
  if (b < B) {
    const T *col = x + a * p.R * B + b;
    int64_t k = k0 + g;
    for (; k + 3 * G < k1; k += 4 * G) {
      T e0 = col[k * B], e1 = col[(k + G) * B], e2 = col[(k + 2 * G) * B], e3 = col[(k + 3 * G) * B];
      radd_t<T>(s, p, op, e0, k);
      radd_t<T>(s, p, op, e1, k + G);
      radd_t<T>(s, p, op, e2, k + 2 * G);
      radd_t<T>(s, p, op, e3, k + 3 * G);
    }
    for (; k < k1; k += G) radd_t<T>(s, p, op, col[k * B], k);
  }
  __shared__ rstate sh[THREADS];
  sh[threadIdx.x] = s;
  for (int w = G >> 1; w > 0; w >>= 1) {
    __syncthreads();
    if (g < w) rcombine(sh[threadIdx.x], sh[threadIdx.x + w * bx], p, op);
  }
  __syncthreads();
  if (g == 0 && b < B) {
    const int64_t o = a * B + b;
    if (gridDim.y == 1) rfinish(sh[tx], p, out, idx, o);
    else partial[o * gridDim.y + blockIdx.y] = sh[tx];
  }
}

// one block per output: combines its nsplit partial states (many) in a fixed order
__global__ void reduce_partials_kernel(rparams p, const rstate *partial, int nsplit, char *out, int64_t *idx) {
  __shared__ rstate sh[THREADS];
  int64_t o = blockIdx.x;
  rstate s = rinit(p);
  for (int j = threadIdx.x; j < nsplit; j += THREADS) rcombine(s, partial[o * nsplit + j], p, p.op);
  sh[threadIdx.x] = s;
  block_combine(sh, p);
  if (threadIdx.x == 0) rfinish(sh[0], p, out, idx, o);
}

// a thread per output: combines its nsplit partial states (few) first to last
__global__ void reduce_partials_thread_kernel(rparams p, const rstate *partial, int nsplit, char *out, int64_t *idx,
                                              int64_t nout) {
  for (int64_t o = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; o < nout; o += (int64_t)gridDim.x * blockDim.x) {
    rstate s = rinit(p);
    for (int j = 0; j < nsplit; j++) rcombine(s, partial[o * nsplit + j], p, p.op);
    rfinish(s, p, out, idx, o);
  }
}

// a thread per output (short reductions)
__global__ void reduce_thread_kernel(rparams p, const char *x, char *out, int64_t *idx, int64_t nout) {
  for (int64_t o = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; o < nout; o += (int64_t)gridDim.x * blockDim.x) {
    int64_t a = o / p.B, b = o - a * p.B, base = a * p.R * p.B + b;
    rstate s = rinit(p);
    for (int64_t k = 0; k < p.R; k++) radd(s, p, x, base + k * p.B, k);
    rfinish(s, p, out, idx, o);
  }
}

// the op a kernel is compiled for: sum for mean, max for argmax, min for argmin; ANY_OP else
int kernel_op(int op) {
  switch (op) {
  case VTL_RED_SUM: case VTL_RED_MEAN: return VTL_RED_SUM;
  case VTL_RED_MAX: case VTL_RED_ARGMAX: return VTL_RED_MAX;
  case VTL_RED_MIN: case VTL_RED_ARGMIN: return VTL_RED_MIN;
  default: return ANY_OP;
  }
}

// What a reduction launch needs besides the kernel's own sizes.
struct rlaunch {
  rparams p;
  const void *x;
  char *out;
  int64_t *idx;
  rstate *partial;
  dim3 grid;
  cudaStream_t st;
  int64_t chunk;
};

template <class T, int V> void launch_row(const rlaunch &l, int64_t rows, int lanes_log2) {
  const T *x = (const T *)l.x;
  switch (kernel_op(l.p.op)) {
  case VTL_RED_SUM:
    reduce_row_kernel<T, V, VTL_RED_SUM><<<l.grid, THREADS, 0, l.st>>>(l.p, x, rows, l.out, l.idx, l.partial, l.chunk, lanes_log2);
    break;
  case VTL_RED_MAX:
    reduce_row_kernel<T, V, VTL_RED_MAX><<<l.grid, THREADS, 0, l.st>>>(l.p, x, rows, l.out, l.idx, l.partial, l.chunk, lanes_log2);
    break;
  case VTL_RED_MIN:
    reduce_row_kernel<T, V, VTL_RED_MIN><<<l.grid, THREADS, 0, l.st>>>(l.p, x, rows, l.out, l.idx, l.partial, l.chunk, lanes_log2);
    break;
  default:
    reduce_row_kernel<T, V, ANY_OP><<<l.grid, THREADS, 0, l.st>>>(l.p, x, rows, l.out, l.idx, l.partial, l.chunk, lanes_log2);
    break;
  }
}

template <class T> void launch_row(const rlaunch &l, int64_t rows, int lanes_log2, bool vec) {
  if (vec) launch_row<T, 16 / sizeof(T)>(l, rows, lanes_log2);
  else launch_row<T, 1>(l, rows, lanes_log2);
}

template <class T> void launch_col(const rlaunch &l, int cols_log2, int64_t colblocks) {
  const T *x = (const T *)l.x;
  switch (kernel_op(l.p.op)) {
  case VTL_RED_SUM:
    reduce_col_kernel<T, VTL_RED_SUM><<<l.grid, THREADS, 0, l.st>>>(l.p, x, l.out, l.idx, l.partial, l.chunk, cols_log2, colblocks);
    break;
  case VTL_RED_MAX:
    reduce_col_kernel<T, VTL_RED_MAX><<<l.grid, THREADS, 0, l.st>>>(l.p, x, l.out, l.idx, l.partial, l.chunk, cols_log2, colblocks);
    break;
  case VTL_RED_MIN:
    reduce_col_kernel<T, VTL_RED_MIN><<<l.grid, THREADS, 0, l.st>>>(l.p, x, l.out, l.idx, l.partial, l.chunk, cols_log2, colblocks);
    break;
  default:
    reduce_col_kernel<T, ANY_OP><<<l.grid, THREADS, 0, l.st>>>(l.p, x, l.out, l.idx, l.partial, l.chunk, cols_log2, colblocks);
    break;
  }
}

// splits for `blocks` blocks of work over R elements, each split at least `least` elements:
// enough to reach TARGET_BLOCKS, no more than R allows, at most 65535 (grid.y)
int64_t pick_splits(int64_t blocks, int64_t R, int64_t least) {
  if (blocks >= TARGET_BLOCKS) return 1;
  int64_t want = (TARGET_BLOCKS + blocks - 1) / blocks, most = (R + least - 1) / least;
  int64_t n = want < most ? want : most;
  return n < 1 ? 1 : n > 65535 ? 65535 : n;
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
  rlaunch l;
  l.p.op = op;
  l.p.integer = x->dtype == VTL_I64;
  l.p.xdt = x->dtype;
  l.p.odt = out->dtype;
  l.p.param = param;
  l.p.R = R;
  l.p.B = B;
  l.x = vtl_tensor_data(x);
  l.out = (char *)vtl_tensor_data(out);
  l.idx = idx ? (int64_t *)vtl_tensor_data(idx) : nullptr;
  l.partial = nullptr;
  l.st = st;
  // short reductions, and narrow columns (under 32) too short to give each row group of a
  // column block two rows when there are outputs enough for a thread each: a thread per output
  bool short_cols = false;
  if (B > 1 && B < 32 && nout >= 32768) {
    int64_t bx = 2;
    while (bx < B) bx *= 2;
    short_cols = R < 2 * (THREADS / bx);
  }
  if (R <= 16 || short_cols) {
    reduce_thread_kernel<<<vtl_cu_blocks(nout), THREADS, 0, st>>>(l.p, (const char *)l.x, l.out, l.idx, nout);
    VTL_CU_LAUNCHED("reduce");
    return VTL_OK;
  }
  const int64_t es = (int64_t)vtl_dtype_size(x->dtype);
  int64_t blocks, nsplit, chunk;
  int shape_log2; // lanes per row (rows) or columns per block (columns), as a power of two
  bool vec = false;
  if (B == 1) {
    // lanes per row: at least 32 elements each, 32 to 256 lanes
    shape_log2 = 5;
    while (shape_log2 < 8 && ((int64_t)64 << shape_log2) <= R) shape_log2++;
    blocks = (A + (THREADS >> shape_log2) - 1) / (THREADS >> shape_log2);
    vec = (uintptr_t)l.x % 16 == 0 && (A == 1 || (R * es) % 16 == 0);
    const int64_t step = ((int64_t)1 << shape_log2) * (vec ? 16 / es : 1); // one vector per lane
    nsplit = pick_splits(blocks, R, step * 8);
    chunk = (R + nsplit - 1) / nsplit;
    chunk = (chunk + step - 1) / step * step;
  } else {
    shape_log2 = 1;
    while (shape_log2 < 5 && ((int64_t)1 << shape_log2) < B) shape_log2++;
    const int64_t colblocks = (B + ((int64_t)1 << shape_log2) - 1) >> shape_log2;
    if (A > INT64_MAX / colblocks) return vtl_error_set(VTL_ERR_ARG, "reduce: too many outputs (%lld)", (long long)nout);
    blocks = A * colblocks;
    nsplit = pick_splits(blocks, R, (int64_t)(THREADS >> shape_log2) * 8);
    chunk = (R + nsplit - 1) / nsplit;
  }
  nsplit = (R + chunk - 1) / chunk;
  if (blocks > 0x7fffffff) return vtl_error_set(VTL_ERR_ARG, "reduce: too many outputs (%lld)", (long long)nout);
  l.grid = dim3((unsigned)blocks, (unsigned)nsplit);
  l.chunk = chunk;
  size_t pbytes = 0;
  if (nsplit > 1) {
    pbytes = (size_t)(nout * nsplit) * sizeof(rstate);
    l.partial = (rstate *)vtl_cu_alloc(pbytes, dev);
    if (!l.partial)
      return vtl_error_set(VTL_ERR_OOM, "reduce: out of memory on cuda:%d for %zu bytes of partial results", dev, pbytes);
  }
  if (B == 1) {
    switch (x->dtype) {
    case VTL_F32: launch_row<float>(l, A, shape_log2, vec); break;
    case VTL_F64: launch_row<double>(l, A, shape_log2, vec); break;
    default: launch_row<int64_t>(l, A, shape_log2, vec); break;
    }
  } else {
    const int64_t colblocks = (B + ((int64_t)1 << shape_log2) - 1) >> shape_log2;
    switch (x->dtype) {
    case VTL_F32: launch_col<float>(l, shape_log2, colblocks); break;
    case VTL_F64: launch_col<double>(l, shape_log2, colblocks); break;
    default: launch_col<int64_t>(l, shape_log2, colblocks); break;
    }
  }
  cudaError_t e = cudaGetLastError();
  if (e == cudaSuccess && nsplit > 1) {
    if (nsplit >= 64) reduce_partials_kernel<<<(unsigned)nout, THREADS, 0, st>>>(l.p, l.partial, (int)nsplit, l.out, l.idx);
    else reduce_partials_thread_kernel<<<vtl_cu_blocks(nout), THREADS, 0, st>>>(l.p, l.partial, (int)nsplit, l.out, l.idx, nout);
    e = cudaGetLastError();
  }
  if (l.partial) vtl_cu_free(l.partial, pbytes, dev); // stream-ordered: reused only by later work on this stream
  return e == cudaSuccess ? VTL_OK : vtl_cu_error(e, "reduce");
}
