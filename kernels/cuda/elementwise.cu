// CUDA elementwise kernels: unary, binary, where, lerp, fill and the fused optimizer updates.
// Each op computes in the compute dtype the op layer chose, with the expressions of
// kernels/cpu/elementwise.c, so results match the CPU's (transcendental functions within the
// few ulp CUDA's math library allows). Operands are strided views (broadcast dims have
// stride 0); a flat path serves one-dim walks whose operands all have the compute dtype.
//
// The vector path: when every operand has the compute dtype (or all are bf16, or all f16, computed
// in f32), the output is contiguous along
// rows and each input either runs along the row with it or holds one value per row (a scalar,
// a broadcast column), threads move 16 bytes per operand at a time, over a grid sized to the
// device and walked with a grid stride. It computes each element with the same expression
// as the other paths, so results are the same bits.
#include <math.h>
#include "common.cuh"

namespace {

template <class C> struct is_float_t { static constexpr bool value = false; };
template <> struct is_float_t<float> { static constexpr bool value = true; };
template <> struct is_float_t<double> { static constexpr bool value = true; };

__device__ __forceinline__ int64_t ipow(int64_t b, int64_t e) {
  if (e < 0) return b == 1 ? 1 : b == -1 ? (e & 1 ? -1 : 1) : 0;
  uint64_t r = 1, x = (uint64_t)b;
  while (e) { if (e & 1) r *= x; x *= x; e >>= 1; }
  return (int64_t)r;
}
__device__ __forceinline__ int64_t imod(int64_t a, int64_t b) {
  if (b == -1) return 0;
  int64_t r = a % b;
  return (r != 0 && ((r < 0) != (b < 0))) ? r + b : r;
}
__device__ __forceinline__ int64_t ifloordiv(int64_t a, int64_t b) {
  if (b == -1) return (int64_t)(0 - (uint64_t)a);
  int64_t q = a / b;
  return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}
__device__ __forceinline__ double fmodpy(double a, double b) {
  double r = fmod(a, b);
  return (r != 0 && ((r < 0) != (b < 0))) ? r + b : r;
}
__device__ __forceinline__ double sgn(double x) { return (double)((x > 0) - (x < 0)); }

// x: one element in compute type C; p0, p1: clamp bounds
template <class C> __device__ __forceinline__ C unary_apply(int op, C x, double p0, double p1) {
  if constexpr (is_float_t<C>::value) {
    constexpr bool F = sizeof(C) == 4;
    switch (op) {
    case VTL_UN_NEG: return -x;
    case VTL_UN_ABS: return x < 0 ? -x : x;
    case VTL_UN_SIGN: return (C)sgn(x);
    case VTL_UN_RELU: return x > 0 ? x : (x != x ? x : (C)0);
    case VTL_UN_SQUARE: return x * x;
    case VTL_UN_CLAMP: return (C)(x < p0 ? p0 : x > p1 ? p1 : (double)x);
    case VTL_UN_FLOOR: return (C)floor((double)x);
    case VTL_UN_CEIL: return (C)ceil((double)x);
    case VTL_UN_ROUND: return (C)rint((double)x);
    case VTL_UN_TRUNC: return (C)trunc((double)x);
    case VTL_UN_EXP: return F ? (C)expf((float)x) : (C)exp((double)x);
    case VTL_UN_LOG: return F ? (C)logf((float)x) : (C)log((double)x);
    case VTL_UN_LOG2: return F ? (C)log2f((float)x) : (C)log2((double)x);
    case VTL_UN_SQRT: return F ? (C)sqrtf((float)x) : (C)sqrt((double)x);
    case VTL_UN_RSQRT: return F ? (C)(1.0f / sqrtf((float)x)) : (C)(1.0 / sqrt((double)x));
    case VTL_UN_SIGMOID: return F ? (C)(1.0f / (1.0f + expf(-(float)x))) : (C)(1.0 / (1.0 + exp(-(double)x)));
    case VTL_UN_TANH: return F ? (C)tanhf((float)x) : (C)tanh((double)x);
    case VTL_UN_SIN: return F ? (C)sinf((float)x) : (C)sin((double)x);
    case VTL_UN_COS: return F ? (C)cosf((float)x) : (C)cos((double)x);
    case VTL_UN_LOG1P: return F ? (C)log1pf((float)x) : (C)log1p((double)x);
    case VTL_UN_EXPM1: return F ? (C)expm1f((float)x) : (C)expm1((double)x);
    case VTL_UN_RECIPROCAL: return (C)1 / x;
    case VTL_UN_ERF: return F ? (C)erff((float)x) : (C)erf((double)x);
    case VTL_UN_ISNAN: return (C)(x != x);
    case VTL_UN_ISINF: return (C)(isinf(x) ? 1 : 0);
    default: return x;
    }
  } else {
    switch (op) {
    case VTL_UN_NEG: return (C)(0 - x);
    case VTL_UN_ABS: return x < 0 ? (C)(0 - x) : x;
    case VTL_UN_SIGN: return (C)((x > 0) - (x < 0));
    case VTL_UN_RELU: return x > 0 ? x : (C)0;
    case VTL_UN_SQUARE: return (C)(x * x);
    case VTL_UN_CLAMP: return (C)((double)x < p0 ? p0 : (double)x > p1 ? p1 : (double)x);
    case VTL_UN_LOGICAL_NOT: return (C)!x;
    default: return x; // floor, ceil, round, trunc of integers
    }
  }
}

template <class C> __device__ __forceinline__ C binary_apply(int op, C x, C y) {
  if constexpr (is_float_t<C>::value) {
    constexpr bool F = sizeof(C) == 4;
    switch (op) {
    case VTL_BIN_ADD: return x + y;
    case VTL_BIN_SUB: return x - y;
    case VTL_BIN_MUL: return x * y;
    case VTL_BIN_DIV: return x / y;
    case VTL_BIN_POW: return (C)pow((double)x, (double)y);
    case VTL_BIN_MAXIMUM: return x != x || y != y ? x + y : x > y ? x : y;
    case VTL_BIN_MINIMUM: return x != x || y != y ? x + y : x < y ? x : y;
    case VTL_BIN_REMAINDER: return (C)fmodpy(x, y);
    case VTL_BIN_FLOOR_DIVIDE: return (C)floor((double)(C)(x / y));
    case VTL_BIN_ATAN2: return F ? (C)atan2f((float)x, (float)y) : (C)atan2((double)x, (double)y);
    case VTL_BIN_EQ: return (C)(x == y);
    case VTL_BIN_NE: return (C)(x != y);
    case VTL_BIN_LT: return (C)(x < y);
    case VTL_BIN_LE: return (C)(x <= y);
    case VTL_BIN_GT: return (C)(x > y);
    case VTL_BIN_GE: return (C)(x >= y);
    default: return x;
    }
  } else {
    switch (op) {
    case VTL_BIN_ADD: return (C)(x + y);
    case VTL_BIN_SUB: return (C)(x - y);
    case VTL_BIN_MUL: return (C)(x * y);
    case VTL_BIN_POW: return (C)ipow(x, y);
    case VTL_BIN_MAXIMUM: return x > y ? x : y;
    case VTL_BIN_MINIMUM: return x < y ? x : y;
    case VTL_BIN_REMAINDER: return (C)imod(x, y);
    case VTL_BIN_FLOOR_DIVIDE: return (C)ifloordiv(x, y);
    case VTL_BIN_EQ: return (C)(x == y);
    case VTL_BIN_NE: return (C)(x != y);
    case VTL_BIN_LT: return (C)(x < y);
    case VTL_BIN_LE: return (C)(x <= y);
    case VTL_BIN_GT: return (C)(x > y);
    case VTL_BIN_GE: return (C)(x >= y);
    case VTL_BIN_LOGICAL_AND: return (C)(x && y);
    case VTL_BIN_LOGICAL_OR: return (C)(x || y);
    case VTL_BIN_LOGICAL_XOR: return (C)(!x != !y);
    default: return x;
    }
  }
}

// out (op 0) = op(x (op 1)); x converted to C, the result from C to out's dtype. FLAT: one dim,
// every operand of dtype CDT.
template <class C, int CDT, bool FLAT>
__global__ void unary_kernel(vtl_cu_iter it, int op, double p0, double p1) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < it.numel; i += (int64_t)gridDim.x * blockDim.x) {
    if (FLAT) {
      C x = *(const C *)(it.base[1] + i * it.st[1][0]);
      *(C *)(it.base[0] + i * it.st[0][0]) = unary_apply<C>(op, x, p0, p1);
    } else {
      int64_t off[VTL_CU_MAXOPS];
      cu_offsets(it, i, off);
      C x = cu_load<C, CDT>(it.base[1] + off[1], it.dt[1]);
      cu_store<C, CDT>(it.base[0] + off[0], it.dt[0], unary_apply<C>(op, x, p0, p1));
    }
  }
}

template <class C, int CDT, bool FLAT> __global__ void binary_kernel(vtl_cu_iter it, int op) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < it.numel; i += (int64_t)gridDim.x * blockDim.x) {
    if (FLAT) {
      C x = *(const C *)(it.base[1] + i * it.st[1][0]), y = *(const C *)(it.base[2] + i * it.st[2][0]);
      *(C *)(it.base[0] + i * it.st[0][0]) = binary_apply<C>(op, x, y);
    } else {
      int64_t off[VTL_CU_MAXOPS];
      cu_offsets(it, i, off);
      C x = cu_load<C, CDT>(it.base[1] + off[1], it.dt[1]), y = cu_load<C, CDT>(it.base[2] + off[2], it.dt[2]);
      cu_store<C, CDT>(it.base[0] + off[0], it.dt[0], binary_apply<C>(op, x, y));
    }
  }
}

// ---- the vector path ----

// The walk of the vector path: `rows` rows of `width` elements (operand 0, the output, and
// every input with inner[o] set step through a row contiguously; an input without it holds one
// element per row); outer[o] is the byte step from one row to the next (0: the same row again).
// With more than one row, width is a multiple of the vector length and every row start of a
// contiguous operand is 16-byte aligned; with one row a tail shorter than a vector is left
// over and done one element at a time.
struct vec_walk {
  char *base[VTL_CU_MAXOPS];
  int64_t outer[VTL_CU_MAXOPS];
  bool inner[VTL_CU_MAXOPS];
  int64_t rows, width, numel;
};

// Fills w for the iterator's walk when every operand has dtype dt (element size es) and the
// layout allows 16-byte vectors; false otherwise.
bool vec_walk_make(vec_walk *w, const vtl_cu_iter &it, int dt) {
  int64_t es = vtl_dtype_size((vtl_dtype)dt), n = 16 / es;
  if (it.nd > 2 || it.numel < 1) return false;
  for (int o = 0; o < it.nops; o++)
    if (it.dt[o] != dt) return false;
  memset(w, 0, sizeof *w);
  w->numel = it.numel;
  if (it.nd <= 1) {
    w->rows = 1;
    w->width = it.numel;
  } else {
    w->rows = it.shape[0];
    w->width = it.shape[1];
    if (w->width % n) return false;
  }
  for (int o = 0; o < it.nops; o++) {
    int64_t in = it.nd == 2 ? it.st[o][1] : it.st[o][0], out = it.nd == 2 ? it.st[o][0] : 0;
    if (it.numel == 1) in = es; // one element: nothing to step through
    if (in == es) {
      if ((uintptr_t)it.base[o] % 16 || out % 16) return false;
      w->inner[o] = true;
    } else if (in != 0 || o == 0) return false;
    w->base[o] = it.base[o];
    w->outer[o] = out;
  }
  return true;
}

// 16 bytes of elements of C
template <class C> struct vec16 {
  static constexpr int N = 16 / sizeof(C);
  C v[N];
};

// operand o's vector for elements [c, c + N) of row r (its row value repeated without inner)
template <class C> __device__ __forceinline__ vec16<C> vec_load(const vec_walk &w, int o, int64_t r, int64_t c) {
  vec16<C> x;
  const char *p = w.base[o] + r * w.outer[o];
  if (w.inner[o]) {
    uint4 u = *(const uint4 *)(p + c * (int64_t)sizeof(C));
    memcpy(x.v, &u, 16);
  } else {
    C one = *(const C *)p;
#pragma unroll
    for (int j = 0; j < vec16<C>::N; j++) x.v[j] = one;
  }
  return x;
}

template <class C> __device__ __forceinline__ void vec_store(const vec_walk &w, int64_t r, int64_t c, const vec16<C> &x) {
  uint4 u;
  memcpy(&u, x.v, 16);
  *(uint4 *)(w.base[0] + r * w.outer[0] + c * (int64_t)sizeof(C)) = u;
}

// element e of the flattened walk, for operand o
template <class C> __device__ __forceinline__ C *vec_elem(const vec_walk &w, int o, int64_t e) {
  int64_t r = 0, c = e;
  if (w.rows > 1) { r = e / w.width; c = e - r * w.width; }
  return (C *)(w.base[o] + r * w.outer[o] + (w.inner[o] ? c * (int64_t)sizeof(C) : 0));
}

// How the vector path stores elements: as the compute type itself (same_store<C>), or as bf16/f16
// bits computed in f32 (half_store<H>, converted as the strided path converts them).
template <class C> struct same_store {
  using S = C;
  using T = C;
  static __device__ __forceinline__ C in(S v) { return v; }
  static __device__ __forceinline__ S out(C v) { return v; }
};
template <int H> struct half_store {
  using S = uint16_t;
  using T = float;
  static __device__ __forceinline__ float in(uint16_t v) { return H == VTL_BF16 ? cu_bf16_to_f32(v) : cu_f16_to_f32(v); }
  static __device__ __forceinline__ uint16_t out(float v) { return H == VTL_BF16 ? cu_f32_to_bf16(v) : cu_f32_to_f16(v); }
};

// out = op(x): vectors over a grid stride, then the tail of a single row
template <class P> __global__ void unary_vec_kernel(vec_walk w, int op, double p0, double p1) {
  using S = typename P::S;
  using T = typename P::T;
  constexpr int N = vec16<S>::N;
  const int64_t nvec = w.numel / N, step = (int64_t)gridDim.x * blockDim.x;
  const int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  for (int64_t v = t; v < nvec; v += step) {
    int64_t e = v * N, r = 0, c = e;
    if (w.rows > 1) { r = e / w.width; c = e - r * w.width; }
    vec16<S> x = vec_load<S>(w, 1, r, c), y;
#pragma unroll
    for (int j = 0; j < N; j++) y.v[j] = P::out(unary_apply<T>(op, P::in(x.v[j]), p0, p1));
    vec_store<S>(w, r, c, y);
  }
  int64_t e = nvec * N + t;
  if (e < w.numel) *vec_elem<S>(w, 0, e) = P::out(unary_apply<T>(op, P::in(*vec_elem<S>(w, 1, e)), p0, p1));
}

// out = op(a, b), as unary_vec_kernel; OP >= 0 compiles the kernel for that op alone (fewer
// registers), -1 reads it from op
template <class P, int OP> __global__ void binary_vec_kernel(vec_walk w, int op_) {
  using S = typename P::S;
  using T = typename P::T;
  constexpr int N = vec16<S>::N;
  const int op = OP >= 0 ? OP : op_;
  const int64_t nvec = w.numel / N, step = (int64_t)gridDim.x * blockDim.x;
  const int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  for (int64_t v = t; v < nvec; v += step) {
    int64_t e = v * N, r = 0, c = e;
    if (w.rows > 1) { r = e / w.width; c = e - r * w.width; }
    vec16<S> x = vec_load<S>(w, 1, r, c), y = vec_load<S>(w, 2, r, c), z;
#pragma unroll
    for (int j = 0; j < N; j++) z.v[j] = P::out(binary_apply<T>(op, P::in(x.v[j]), P::in(y.v[j])));
    vec_store<S>(w, r, c, z);
  }
  int64_t e = nvec * N + t;
  if (e < w.numel)
    *vec_elem<S>(w, 0, e) = P::out(binary_apply<T>(op, P::in(*vec_elem<S>(w, 1, e)), P::in(*vec_elem<S>(w, 2, e))));
}

// Blocks of 256 for the vector path: one thread per vector (or per tail element), at most 8
// blocks per multiprocessor; the kernels loop with a grid stride over the rest.
unsigned vec_blocks(const vec_walk &w, int n, int dev) {
  int64_t work = w.numel / n > w.numel % n ? w.numel / n : w.numel % n;
  int64_t b = (work + 255) / 256, most = (int64_t)vtl_cu_sm_count(dev) * 8;
  return (unsigned)(b < 1 ? 1 : b > most ? most : b);
}

// a copy with conversion: out = (dtype of out) x
__global__ void copy_kernel(vtl_cu_iter it) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < it.numel; i += (int64_t)gridDim.x * blockDim.x) {
    int64_t off[VTL_CU_MAXOPS];
    cu_offsets(it, i, off);
    cu_cast(it.base[0] + off[0], it.dt[0], it.base[1] + off[1], it.dt[1]);
  }
}

// Contiguous f32 -> f16/bf16 (TO_HALF) or f16/bf16 -> f32 conversions, 8 elements per step: two
// 16-byte f32 accesses and one 16-byte half access (the pointers 16-byte aligned), the last
// n % 8 one at a time; the same roundings as cu_cast, so the same bits as copy_kernel.
template <bool BF, bool TO_HALF> __global__ void cast_half_vec(const void *src, void *dst, int64_t n) {
  int64_t t0 = blockIdx.x * (int64_t)blockDim.x + threadIdx.x, step = (int64_t)gridDim.x * blockDim.x;
  int64_t groups = n / 8;
  for (int64_t t = t0; t < groups; t += step) {
    union {
      uint4 v;
      uint16_t e[8];
    } h;
    float f[8];
    if (TO_HALF) {
      *(float4 *)f = ((const float4 *)src)[2 * t];
      *(float4 *)(f + 4) = ((const float4 *)src)[2 * t + 1];
#pragma unroll
      for (int k = 0; k < 8; k++) h.e[k] = BF ? cu_f32_to_bf16(f[k]) : cu_f32_to_f16(f[k]);
      ((uint4 *)dst)[t] = h.v;
    } else {
      h.v = ((const uint4 *)src)[t];
#pragma unroll
      for (int k = 0; k < 8; k++) f[k] = BF ? cu_bf16_to_f32(h.e[k]) : cu_f16_to_f32(h.e[k]);
      ((float4 *)dst)[2 * t] = *(float4 *)f;
      ((float4 *)dst)[2 * t + 1] = *(float4 *)(f + 4);
    }
  }
  for (int64_t i = groups * 8 + t0; i < n; i += step) {
    if (TO_HALF) {
      float f = ((const float *)src)[i];
      ((uint16_t *)dst)[i] = BF ? cu_f32_to_bf16(f) : cu_f32_to_f16(f);
    } else {
      uint16_t b = ((const uint16_t *)src)[i];
      ((float *)dst)[i] = BF ? cu_bf16_to_f32(b) : cu_f16_to_f32(b);
    }
  }
}

// out = cond ? a : b; a and b converted to the compute dtype cdt first, then to out's dtype
__global__ void where_kernel(vtl_cu_iter it, int cdt) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < it.numel; i += (int64_t)gridDim.x * blockDim.x) {
    int64_t off[VTL_CU_MAXOPS];
    cu_offsets(it, i, off);
    uint8_t c;
    cu_cast((char *)&c, VTL_BOOL, it.base[1] + off[1], it.dt[1]);
    int o = c ? 2 : 3;
    uint64_t v = 0;
    cu_cast((char *)&v, cdt, it.base[o] + off[o], it.dt[o]);
    cu_cast(it.base[0] + off[0], it.dt[0], (const char *)&v, cdt);
  }
}

// out = a + w * (b - a)
template <class C, int CDT> __global__ void lerp_kernel(vtl_cu_iter it) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < it.numel; i += (int64_t)gridDim.x * blockDim.x) {
    int64_t off[VTL_CU_MAXOPS];
    cu_offsets(it, i, off);
    C a = cu_load<C, CDT>(it.base[1] + off[1], it.dt[1]), b = cu_load<C, CDT>(it.base[2] + off[2], it.dt[2]);
    C w = cu_load<C, CDT>(it.base[3] + off[3], it.dt[3]);
    cu_store<C, CDT>(it.base[0] + off[0], it.dt[0], fma(w, b - a, a));
  }
}

// every element of out = the bit pattern `bits` (element size T)
template <class T> __global__ void fill_kernel(vtl_cu_iter it, T bits) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < it.numel; i += (int64_t)gridDim.x * blockDim.x) {
    int64_t off[VTL_CU_MAXOPS];
    cu_offsets(it, i, off);
    *(T *)(it.base[0] + off[0]) = bits;
  }
}

// y (ops 0 and 1) updated in place with a (op 2) and b (op 3); rounding as kernels/cpu
template <class C, int CDT> __global__ void fused_kernel(vtl_cu_iter it, int op, C v) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < it.numel; i += (int64_t)gridDim.x * blockDim.x) {
    int64_t off[VTL_CU_MAXOPS];
    cu_offsets(it, i, off);
    C y = cu_load<C, CDT>(it.base[1] + off[1], it.dt[1]), a = cu_load<C, CDT>(it.base[2] + off[2], it.dt[2]);
    C b = cu_load<C, CDT>(it.base[3] + off[3], it.dt[3]);
    C r;
    if (op == VTL_FUSED_AXPY) r = fma(v, a, y);
    else if (op == VTL_FUSED_ADDCMUL) r = fma(v * a, b, y);
    else r = y + (v * a) / b;
    cu_store<C, CDT>(it.base[0] + off[0], it.dt[0], r);
  }
}

// launches kernel over the iterator's elements (kernel(it, args...)); checks the launch
template <class K, class... Args>
vtl_status launch(K kernel, const vtl_cu_iter &it, cudaStream_t s, const char *what, Args... args) {
  kernel<<<vtl_cu_blocks(it.numel), 256, 0, s>>>(it, args...);
  VTL_CU_LAUNCHED(what);
  return VTL_OK;
}

// the vector path when the layout allows it, else the flat path (one dim, every operand of
// dtype CDT, the output included), else the strided one
// the vector kernels of storage policy P over walk w
template <class P> void unary_vec(const vec_walk &w, cudaStream_t s, int dev, int op, double p0, double p1) {
  unary_vec_kernel<P><<<vec_blocks(w, vec16<typename P::S>::N, dev), 256, 0, s>>>(w, op, p0, p1);
}
template <class P> void binary_vec(const vec_walk &w, cudaStream_t s, int dev, int op) {
  unsigned nb = vec_blocks(w, vec16<typename P::S>::N, dev);
  switch (op) {
  case VTL_BIN_ADD: binary_vec_kernel<P, VTL_BIN_ADD><<<nb, 256, 0, s>>>(w, op); break;
  case VTL_BIN_SUB: binary_vec_kernel<P, VTL_BIN_SUB><<<nb, 256, 0, s>>>(w, op); break;
  case VTL_BIN_MUL: binary_vec_kernel<P, VTL_BIN_MUL><<<nb, 256, 0, s>>>(w, op); break;
  case VTL_BIN_DIV: binary_vec_kernel<P, VTL_BIN_DIV><<<nb, 256, 0, s>>>(w, op); break;
  default: binary_vec_kernel<P, -1><<<nb, 256, 0, s>>>(w, op); break;
  }
}
// f32 computation over operands that are all bf16 (or all f16): the half vector path
bool half_walk(vec_walk *w, const vtl_cu_iter &it, int cdt) {
  return cdt == VTL_F32 && (it.dt[0] == VTL_BF16 || it.dt[0] == VTL_F16) && vec_walk_make(w, it, it.dt[0]);
}

template <class C, int CDT>
vtl_status run_unary(const vtl_cu_iter &it, cudaStream_t s, int dev, int op, double p0, double p1) {
  vec_walk w;
  if (half_walk(&w, it, CDT)) {
    if (it.dt[0] == VTL_BF16) unary_vec<half_store<VTL_BF16>>(w, s, dev, op, p0, p1);
    else unary_vec<half_store<VTL_F16>>(w, s, dev, op, p0, p1);
    VTL_CU_LAUNCHED("unary");
    return VTL_OK;
  }
  if (vec_walk_make(&w, it, CDT)) {
    unary_vec<same_store<C>>(w, s, dev, op, p0, p1);
    VTL_CU_LAUNCHED("unary");
    return VTL_OK;
  }
  if (vtl_cu_iter_flat(&it, CDT)) return launch(unary_kernel<C, CDT, true>, it, s, "unary", op, p0, p1);
  return launch(unary_kernel<C, CDT, false>, it, s, "unary", op, p0, p1);
}

template <class C, int CDT> vtl_status run_binary(const vtl_cu_iter &it, cudaStream_t s, int dev, int op) {
  vec_walk w;
  if (half_walk(&w, it, CDT)) {
    if (it.dt[0] == VTL_BF16) binary_vec<half_store<VTL_BF16>>(w, s, dev, op);
    else binary_vec<half_store<VTL_F16>>(w, s, dev, op);
    VTL_CU_LAUNCHED("binary");
    return VTL_OK;
  }
  if (vec_walk_make(&w, it, CDT)) {
    binary_vec<same_store<C>>(w, s, dev, op);
    VTL_CU_LAUNCHED("binary");
    return VTL_OK;
  }
  if (vtl_cu_iter_flat(&it, CDT)) return launch(binary_kernel<C, CDT, true>, it, s, "binary", op);
  return launch(binary_kernel<C, CDT, false>, it, s, "binary", op);
}

bool is_logical(int op) { return op >= VTL_BIN_LOGICAL_AND; }

} // namespace

vtl_status vtl_cu_unary(vtl_unary_op op, vtl_tensor *out, const vtl_tensor *x, vtl_dtype compute, const double *params) {
  cudaStream_t s = vtl_cu_stream(vtl_cu_device(out));
  if (!s) return vtl_error_status();
  const vtl_tensor *ts[2] = {out, x};
  vtl_cu_iter it;
  vtl_cu_iter_make(&it, 2, ts);
  if (it.numel == 0) return VTL_OK;
  if (op == VTL_UN_COPY) {
    size_t es = vtl_dtype_size(out->dtype);
    if (out->dtype == x->dtype && it.nd <= 1 && it.st[0][0] == (int64_t)es && it.st[1][0] == (int64_t)es) {
      cudaError_t e = cudaMemcpyAsync(it.base[0], it.base[1], (size_t)it.numel * es, cudaMemcpyDeviceToDevice, s);
      return e == cudaSuccess ? VTL_OK : vtl_cu_error(e, "copy");
    }
    // autocast's casts: contiguous f32 <-> f16/bf16 in 16-byte steps
    bool to_half = x->dtype == VTL_F32;
    vtl_dtype h = to_half ? out->dtype : x->dtype, f = to_half ? x->dtype : out->dtype;
    if ((h == VTL_BF16 || h == VTL_F16) && f == VTL_F32 && it.nd <= 1 &&
        it.st[0][0] == (int64_t)es && it.st[1][0] == (int64_t)vtl_dtype_size(x->dtype) &&
        (((uintptr_t)it.base[0] | (uintptr_t)it.base[1]) & 15) == 0) {
      unsigned blocks = vtl_cu_blocks((it.numel + 7) / 8);
      if (h == VTL_BF16 && to_half) cast_half_vec<true, true><<<blocks, 256, 0, s>>>(it.base[1], it.base[0], it.numel);
      else if (h == VTL_BF16) cast_half_vec<true, false><<<blocks, 256, 0, s>>>(it.base[1], it.base[0], it.numel);
      else if (to_half) cast_half_vec<false, true><<<blocks, 256, 0, s>>>(it.base[1], it.base[0], it.numel);
      else cast_half_vec<false, false><<<blocks, 256, 0, s>>>(it.base[1], it.base[0], it.numel);
      cudaError_t e = cudaGetLastError();
      return e == cudaSuccess ? VTL_OK : vtl_cu_error(e, "copy");
    }
    return launch(copy_kernel, it, s, "copy");
  }
  double p0 = params ? params[0] : 0, p1 = params ? params[1] : 0;
  // isnan/isinf/logical_not write bool; the result is stored from the compute type either way
  int dev = vtl_cu_device(out);
  switch (compute) {
  case VTL_F32: return run_unary<float, VTL_F32>(it, s, dev, op, p0, p1);
  case VTL_F64: return run_unary<double, VTL_F64>(it, s, dev, op, p0, p1);
  case VTL_I64: return run_unary<int64_t, VTL_I64>(it, s, dev, op, p0, p1);
  case VTL_I32: return run_unary<int32_t, VTL_I32>(it, s, dev, op, p0, p1);
  case VTL_U8: return run_unary<uint8_t, VTL_U8>(it, s, dev, op, p0, p1);
  case VTL_BOOL: return run_unary<uint8_t, VTL_BOOL>(it, s, dev, op, p0, p1);
  default: return vtl_error_set(VTL_ERR_ARG, "unary: not supported for %s on cuda", vtl_dtype_name(compute));
  }
}

vtl_status vtl_cu_binary(vtl_binary_op op, vtl_tensor *out, const vtl_tensor *a, const vtl_tensor *b, vtl_dtype compute) {
  if (op == VTL_BIN_DIV || op == VTL_BIN_ATAN2) {
    if (compute != VTL_F32 && compute != VTL_F64)
      return vtl_error_set(VTL_ERR_ARG, "binary op: not supported for %s", vtl_dtype_name(compute));
  }
  cudaStream_t s = vtl_cu_stream(vtl_cu_device(out));
  if (!s) return vtl_error_status();
  const vtl_tensor *ts[3] = {out, a, b};
  vtl_cu_iter it;
  vtl_cu_iter_make(&it, 3, ts);
  if (it.numel == 0) return VTL_OK;
  vtl_dtype key = is_logical(op) ? VTL_BOOL : compute;
  // compare and logical ops write bool: flat only when the output is of the compute dtype too
  int dev = vtl_cu_device(out);
  switch (key) {
  case VTL_F32: return run_binary<float, VTL_F32>(it, s, dev, op);
  case VTL_F64: return run_binary<double, VTL_F64>(it, s, dev, op);
  case VTL_I64: return run_binary<int64_t, VTL_I64>(it, s, dev, op);
  case VTL_I32: return run_binary<int32_t, VTL_I32>(it, s, dev, op);
  case VTL_U8: return run_binary<uint8_t, VTL_U8>(it, s, dev, op);
  case VTL_BOOL: return run_binary<uint8_t, VTL_BOOL>(it, s, dev, op);
  default: return vtl_error_set(VTL_ERR_ARG, "binary op: not supported for %s on cuda", vtl_dtype_name(compute));
  }
}

vtl_status vtl_cu_where(vtl_tensor *out, const vtl_tensor *cond, const vtl_tensor *a, const vtl_tensor *b, vtl_dtype compute) {
  cudaStream_t s = vtl_cu_stream(vtl_cu_device(out));
  if (!s) return vtl_error_status();
  const vtl_tensor *ts[4] = {out, cond, a, b};
  vtl_cu_iter it;
  vtl_cu_iter_make(&it, 4, ts);
  if (it.numel == 0) return VTL_OK;
  return launch(where_kernel, it, s, "where", (int)compute);
}

vtl_status vtl_cu_lerp(vtl_tensor *out, const vtl_tensor *a, const vtl_tensor *b, const vtl_tensor *w) {
  cudaStream_t s = vtl_cu_stream(vtl_cu_device(out));
  if (!s) return vtl_error_status();
  const vtl_tensor *ts[4] = {out, a, b, w};
  vtl_cu_iter it;
  vtl_cu_iter_make(&it, 4, ts);
  if (it.numel == 0) return VTL_OK;
  if (out->dtype == VTL_F64) return launch(lerp_kernel<double, VTL_F64>, it, s, "lerp");
  return launch(lerp_kernel<float, VTL_F32>, it, s, "lerp");
}

vtl_status vtl_cu_fill(vtl_tensor *out, double value) {
  cudaStream_t s = vtl_cu_stream(vtl_cu_device(out));
  if (!s) return vtl_error_status();
  // the bit pattern the CPU kernel writes (kernels/cpu/elementwise.c cpu_fill)
  uint64_t bits = 0;
  vtl_store_from_double(&bits, out->dtype, value);
  if (out->dtype == VTL_I64 && value == (double)(int64_t)value) bits = (uint64_t)(int64_t)value;
  const vtl_tensor *ts[1] = {out};
  vtl_cu_iter it;
  vtl_cu_iter_make(&it, 1, ts);
  if (it.numel == 0) return VTL_OK;
  size_t es = vtl_dtype_size(out->dtype);
  if (it.nd <= 1 && it.st[0][0] == (int64_t)es && (bits == 0 || es == 1)) {
    cudaError_t e = cudaMemsetAsync(it.base[0], (int)(bits & 0xff), (size_t)it.numel * es, s);
    return e == cudaSuccess ? VTL_OK : vtl_cu_error(e, "fill");
  }
  switch (es) {
  case 1: return launch(fill_kernel<uint8_t>, it, s, "fill", (uint8_t)bits);
  case 2: return launch(fill_kernel<uint16_t>, it, s, "fill", (uint16_t)bits);
  case 4: return launch(fill_kernel<uint32_t>, it, s, "fill", (uint32_t)bits);
  default: return launch(fill_kernel<uint64_t>, it, s, "fill", bits);
  }
}

vtl_status vtl_cu_fused(vtl_fused_op op, vtl_tensor *y, const vtl_tensor *a, const vtl_tensor *b, double value) {
  cudaStream_t s = vtl_cu_stream(vtl_cu_device(y));
  if (!s) return vtl_error_status();
  const vtl_tensor *ts[4] = {y, y, a, b ? b : a};
  vtl_cu_iter it;
  vtl_cu_iter_make(&it, 4, ts);
  if (it.numel == 0) return VTL_OK;
  if (y->dtype == VTL_F64) return launch(fused_kernel<double, VTL_F64>, it, s, "fused", (int)op, value);
  return launch(fused_kernel<float, VTL_F32>, it, s, "fused", (int)op, (float)value);
}
