/* CPU elementwise kernels: unary, binary, where, lerp, fill. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "iter.h"
#include "backend.h"
#include "nn_conv.h"

/* x: (n) with byte stride s[1]; out: (n) with byte stride s[0]; prm: op parameters */
#define UNARY_LOOP(NAME, T, R, EXPR)                                                         \
  static void NAME(char **p, const int64_t *s, int64_t n, const void *ctx) {                  \
    const double *prm = ctx;                                                                  \
    (void)prm;                                                                                \
    if (s[0] == sizeof(R) && s[1] == sizeof(T) && (void *)p[0] == (void *)p[1]) {             \
      T *O = (T *)p[0]; /* in place: same type, one array */                                  \
      for (int64_t i = 0; i < n; i++) { T x = O[i]; O[i] = (T)(EXPR); }                       \
    } else if (s[0] == sizeof(R) && s[1] == sizeof(T)) {                                      \
      R *O = (R *)p[0];                                                                       \
      const T *A = (const T *)p[1];                                                           \
      for (int64_t i = 0; i < n; i++) { T x = A[i]; O[i] = (R)(EXPR); }                       \
    } else {                                                                                  \
      for (int64_t i = 0; i < n; i++) {                                                       \
        T x = *(const T *)(p[1] + i * s[1]);                                                  \
        *(R *)(p[0] + i * s[0]) = (R)(EXPR);                                                  \
      }                                                                                       \
    }                                                                                         \
  }

/* a, b: (n) with byte strides s[1], s[2] (0 for a broadcast scalar); out: stride s[0] */
#define BINARY_LOOP(NAME, T, R, EXPR)                                                        \
  static void NAME(char **p, const int64_t *s, int64_t n, const void *ctx) {                  \
    (void)ctx;                                                                                \
    R *O = (R *)p[0];                                                                         \
    const T *A = (const T *)p[1], *B = (const T *)p[2];                                       \
    if (s[0] == sizeof(R) && s[1] == sizeof(T) && s[2] == sizeof(T) && (void *)O == (void *)A) { \
      T *IO = (T *)p[0]; /* in place: one array read and written */                           \
      for (int64_t i = 0; i < n; i++) { T x = IO[i], y = B[i]; IO[i] = (T)(EXPR); }           \
    } else if (s[0] == sizeof(R) && s[1] == sizeof(T) && s[2] == sizeof(T)) {                 \
      for (int64_t i = 0; i < n; i++) { T x = A[i], y = B[i]; O[i] = (R)(EXPR); }             \
    } else if (s[0] == sizeof(R) && s[1] == sizeof(T) && s[2] == 0) {                         \
      const T y = B[0];                                                                       \
      for (int64_t i = 0; i < n; i++) { T x = A[i]; O[i] = (R)(EXPR); }                       \
    } else if (s[0] == sizeof(R) && s[1] == 0 && s[2] == sizeof(T)) {                         \
      const T x = A[0];                                                                       \
      for (int64_t i = 0; i < n; i++) { T y = B[i]; O[i] = (R)(EXPR); }                       \
    } else {                                                                                  \
      for (int64_t i = 0; i < n; i++) {                                                       \
        T x = *(const T *)(p[1] + i * s[1]), y = *(const T *)(p[2] + i * s[2]);               \
        *(R *)(p[0] + i * s[0]) = (R)(EXPR);                                                  \
      }                                                                                       \
    }                                                                                         \
  }

/* Loops for every numeric compute dtype (f32, f64, i64, i32, u8) from one expression. */
#define UNARY_ALL(NAME, EXPR_F, EXPR_I)                                                      \
  UNARY_LOOP(NAME##_f32, float, float, EXPR_F)                                                \
  UNARY_LOOP(NAME##_f64, double, double, EXPR_F)                                              \
  UNARY_LOOP(NAME##_i64, int64_t, int64_t, EXPR_I)                                            \
  UNARY_LOOP(NAME##_i32, int32_t, int32_t, EXPR_I)                                            \
  UNARY_LOOP(NAME##_u8, uint8_t, uint8_t, EXPR_I)
#define UNARY_FLOAT(NAME, EXPR_F32, EXPR_F64)                                                \
  UNARY_LOOP(NAME##_f32, float, float, EXPR_F32)                                              \
  UNARY_LOOP(NAME##_f64, double, double, EXPR_F64)
#define BINARY_ALL(NAME, R_F, R_I, EXPR_F, EXPR_I)                                           \
  BINARY_LOOP(NAME##_f32, float, R_F(float), EXPR_F)                                          \
  BINARY_LOOP(NAME##_f64, double, R_F(double), EXPR_F)                                        \
  BINARY_LOOP(NAME##_i64, int64_t, R_I(int64_t), EXPR_I)                                      \
  BINARY_LOOP(NAME##_i32, int32_t, R_I(int32_t), EXPR_I)                                      \
  BINARY_LOOP(NAME##_u8, uint8_t, R_I(uint8_t), EXPR_I)
#define SAME(T) T
#define BOOLR(T) uint8_t
#define ROW_ALL(NAME) {[VTL_F32] = NAME##_f32, [VTL_F64] = NAME##_f64, [VTL_I64] = NAME##_i64, \
                       [VTL_I32] = NAME##_i32, [VTL_U8] = NAME##_u8}
#define ROW_FLOAT(NAME) {[VTL_F32] = NAME##_f32, [VTL_F64] = NAME##_f64}

static inline double sgn(double x) { return (double)((x > 0) - (x < 0)); }
static inline double round_even(double x) { return nearbyint(x); }
static inline float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }
static inline double sigmoidd(double x) { return 1.0 / (1.0 + exp(-x)); }
/* integer power by squaring; negative exponents follow integer division semantics */
static inline int64_t ipow(int64_t b, int64_t e) {
  if (e < 0) return b == 1 ? 1 : b == -1 ? (e & 1 ? -1 : 1) : 0;
  uint64_t r = 1, x = (uint64_t)b;
  while (e) { if (e & 1) r *= x; x *= x; e >>= 1; }
  return (int64_t)r;
}
/* Python-style modulo and floor division (sign of the divisor); divisors are checked non-zero
   for integer types by the op layer, and -1 is special-cased to avoid INT_MIN / -1. */
static inline int64_t imod(int64_t a, int64_t b) {
  if (b == -1) return 0;
  int64_t r = a % b;
  return (r != 0 && ((r < 0) != (b < 0))) ? r + b : r;
}
static inline int64_t ifloordiv(int64_t a, int64_t b) {
  if (b == -1) return (int64_t)(0 - (uint64_t)a);
  int64_t q = a / b;
  return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}
static inline double fmodpy(double a, double b) {
  double r = fmod(a, b);
  return (r != 0 && ((r < 0) != (b < 0))) ? r + b : r;
}
#define FMAX(x, y) ((x) != (x) || (y) != (y) ? (x) + (y) : (x) > (y) ? (x) : (y))
#define FMIN(x, y) ((x) != (x) || (y) != (y) ? (x) + (y) : (x) < (y) ? (x) : (y))

UNARY_ALL(neg, -x, 0 - x)
UNARY_ALL(abs, x < 0 ? -x : x, x < 0 ? 0 - x : x)
UNARY_ALL(sign, sgn(x), (x > 0) - (x < 0))
UNARY_ALL(relu, x > 0 ? x : (x != x ? x : 0), x > 0 ? x : 0)
UNARY_ALL(square, x * x, x * x)
UNARY_ALL(clamp, (x < prm[0] ? prm[0] : x > prm[1] ? prm[1] : x),
          ((double)x < prm[0] ? prm[0] : (double)x > prm[1] ? prm[1] : x))
UNARY_ALL(floor, floor(x), x)
UNARY_ALL(ceil, ceil(x), x)
UNARY_ALL(round, round_even(x), x)
UNARY_ALL(trunc, trunc(x), x)
UNARY_FLOAT(exp, expf(x), exp(x))
UNARY_FLOAT(log, logf(x), log(x))
UNARY_FLOAT(log2, log2f(x), log2(x))
UNARY_FLOAT(sqrt, sqrtf(x), sqrt(x))
UNARY_FLOAT(rsqrt, 1.0f / sqrtf(x), 1.0 / sqrt(x))
UNARY_FLOAT(sigmoid, sigmoidf(x), sigmoidd(x))
UNARY_FLOAT(tanh, tanhf(x), tanh(x))
UNARY_FLOAT(sin, sinf(x), sin(x))
UNARY_FLOAT(cos, cosf(x), cos(x))
UNARY_FLOAT(log1p, log1pf(x), log1p(x))
UNARY_FLOAT(expm1, expm1f(x), expm1(x))
UNARY_FLOAT(reciprocal, 1.0f / x, 1.0 / x)
UNARY_FLOAT(erf, erff(x), erf(x))
UNARY_LOOP(lnot_u8, uint8_t, uint8_t, !x)
UNARY_LOOP(isnan_f32, float, uint8_t, x != x)
UNARY_LOOP(isnan_f64, double, uint8_t, x != x)
UNARY_LOOP(isinf_f32, float, uint8_t, isinf(x))
UNARY_LOOP(isinf_f64, double, uint8_t, isinf(x))

static const vtl_loop_fn unary_loops[VTL_UN_COUNT][VTL_NDTYPES] = {
  [VTL_UN_NEG] = ROW_ALL(neg), [VTL_UN_ABS] = ROW_ALL(abs),
  [VTL_UN_SIGN] = ROW_ALL(sign), [VTL_UN_RELU] = ROW_ALL(relu), [VTL_UN_SQUARE] = ROW_ALL(square),
  [VTL_UN_CLAMP] = ROW_ALL(clamp), [VTL_UN_FLOOR] = ROW_ALL(floor), [VTL_UN_CEIL] = ROW_ALL(ceil),
  [VTL_UN_ROUND] = ROW_ALL(round), [VTL_UN_TRUNC] = ROW_ALL(trunc),
  [VTL_UN_EXP] = ROW_FLOAT(exp), [VTL_UN_LOG] = ROW_FLOAT(log), [VTL_UN_LOG2] = ROW_FLOAT(log2),
  [VTL_UN_SQRT] = ROW_FLOAT(sqrt), [VTL_UN_RSQRT] = ROW_FLOAT(rsqrt),
  [VTL_UN_SIGMOID] = ROW_FLOAT(sigmoid), [VTL_UN_TANH] = ROW_FLOAT(tanh),
  [VTL_UN_SIN] = ROW_FLOAT(sin), [VTL_UN_COS] = ROW_FLOAT(cos), [VTL_UN_LOG1P] = ROW_FLOAT(log1p),
  [VTL_UN_EXPM1] = ROW_FLOAT(expm1), [VTL_UN_RECIPROCAL] = ROW_FLOAT(reciprocal),
  [VTL_UN_ERF] = ROW_FLOAT(erf),
  [VTL_UN_LOGICAL_NOT] = {[VTL_BOOL] = lnot_u8},
  [VTL_UN_ISNAN] = {[VTL_F32] = isnan_f32, [VTL_F64] = isnan_f64},
  [VTL_UN_ISINF] = {[VTL_F32] = isinf_f32, [VTL_F64] = isinf_f64},
};

BINARY_ALL(add, SAME, SAME, x + y, x + y)
BINARY_ALL(sub, SAME, SAME, x - y, x - y)
BINARY_ALL(mul, SAME, SAME, x * y, x * y)
BINARY_ALL(maximum, SAME, SAME, FMAX(x, y), (x > y ? x : y))
BINARY_ALL(minimum, SAME, SAME, FMIN(x, y), (x < y ? x : y))
BINARY_ALL(pow, SAME, SAME, pow(x, y), ipow(x, y))
BINARY_ALL(remainder, SAME, SAME, fmodpy(x, y), imod(x, y))
BINARY_ALL(floordiv, SAME, SAME, floor(x / y), ifloordiv(x, y))
BINARY_ALL(eq, BOOLR, BOOLR, x == y, x == y)
BINARY_ALL(ne, BOOLR, BOOLR, x != y, x != y)
BINARY_ALL(lt, BOOLR, BOOLR, x < y, x < y)
BINARY_ALL(le, BOOLR, BOOLR, x <= y, x <= y)
BINARY_ALL(gt, BOOLR, BOOLR, x > y, x > y)
BINARY_ALL(ge, BOOLR, BOOLR, x >= y, x >= y)
BINARY_LOOP(div_f32, float, float, x / y)
BINARY_LOOP(div_f64, double, double, x / y)
BINARY_LOOP(atan2_f32, float, float, atan2f(x, y))
BINARY_LOOP(atan2_f64, double, double, atan2(x, y))
BINARY_LOOP(land_u8, uint8_t, uint8_t, x && y)
BINARY_LOOP(lor_u8, uint8_t, uint8_t, x || y)
BINARY_LOOP(lxor_u8, uint8_t, uint8_t, !x != !y)

static const vtl_loop_fn binary_loops[VTL_BIN_COUNT][VTL_NDTYPES] = {
  [VTL_BIN_ADD] = ROW_ALL(add), [VTL_BIN_SUB] = ROW_ALL(sub), [VTL_BIN_MUL] = ROW_ALL(mul),
  [VTL_BIN_DIV] = ROW_FLOAT(div), [VTL_BIN_POW] = ROW_ALL(pow),
  [VTL_BIN_MAXIMUM] = ROW_ALL(maximum), [VTL_BIN_MINIMUM] = ROW_ALL(minimum),
  [VTL_BIN_REMAINDER] = ROW_ALL(remainder), [VTL_BIN_FLOOR_DIVIDE] = ROW_ALL(floordiv),
  [VTL_BIN_ATAN2] = ROW_FLOAT(atan2),
  [VTL_BIN_EQ] = ROW_ALL(eq), [VTL_BIN_NE] = ROW_ALL(ne), [VTL_BIN_LT] = ROW_ALL(lt),
  [VTL_BIN_LE] = ROW_ALL(le), [VTL_BIN_GT] = ROW_ALL(gt), [VTL_BIN_GE] = ROW_ALL(ge),
  [VTL_BIN_LOGICAL_AND] = {[VTL_BOOL] = land_u8}, [VTL_BIN_LOGICAL_OR] = {[VTL_BOOL] = lor_u8},
  [VTL_BIN_LOGICAL_XOR] = {[VTL_BOOL] = lxor_u8},
};

static int is_compare(vtl_binary_op op) { return op >= VTL_BIN_EQ && op <= VTL_BIN_GE; }
static int is_logical(vtl_binary_op op) { return op >= VTL_BIN_LOGICAL_AND; }

/* copy by element size: the iterator casts the source to the destination dtype */
#define COPY_LOOP(NAME, T)                                                                   \
  static void NAME(char **p, const int64_t *s, int64_t n, const void *ctx) {                  \
    (void)ctx;                                                                                \
    if (s[0] == sizeof(T) && s[1] == sizeof(T)) memmove(p[0], p[1], (size_t)n * sizeof(T));   \
    else for (int64_t i = 0; i < n; i++) *(T *)(p[0] + i * s[0]) = *(const T *)(p[1] + i * s[1]); \
  }
COPY_LOOP(copy1, uint8_t)
COPY_LOOP(copy2, uint16_t)
COPY_LOOP(copy4, uint32_t)
COPY_LOOP(copy8, uint64_t)

static vtl_status cpu_unary(vtl_unary_op op, vtl_tensor *out, const vtl_tensor *x, vtl_dtype compute,
                            const double *params) {
  if (op == VTL_UN_COPY) {
    static const vtl_loop_fn by_size[9] = {[1] = copy1, [2] = copy2, [4] = copy4, [8] = copy8};
    const vtl_tensor *ts[2] = {out, x};
    vtl_dtype cdt[2] = {out->dtype, out->dtype};
    vtl_cpu_iter(2, ts, cdt, by_size[vtl_dtype_size(out->dtype)], NULL);
    return VTL_OK;
  }
  vtl_loop_fn fn = unary_loops[op][compute];
  if (!fn) return vtl_error_set(VTL_ERR_ARG, "%s: not supported for %s", "unary", vtl_dtype_name(compute));
  vtl_dtype out_cdt = compute;
  if (op == VTL_UN_ISNAN || op == VTL_UN_ISINF || op == VTL_UN_LOGICAL_NOT) out_cdt = VTL_BOOL;
  const vtl_tensor *ts[2] = {out, x};
  vtl_dtype cdt[2] = {out_cdt, compute};
  vtl_cpu_iter(2, ts, cdt, fn, params);
  return VTL_OK;
}

static vtl_status cpu_binary(vtl_binary_op op, vtl_tensor *out, const vtl_tensor *a, const vtl_tensor *b,
                             vtl_dtype compute) {
  vtl_dtype key = is_logical(op) ? VTL_BOOL : compute;
  vtl_loop_fn fn = binary_loops[op][key];
  if (!fn) return vtl_error_set(VTL_ERR_ARG, "binary op: not supported for %s", vtl_dtype_name(compute));
  const vtl_tensor *ts[3] = {out, a, b};
  vtl_dtype oc = (is_compare(op) || is_logical(op)) ? VTL_BOOL : compute;
  vtl_dtype cdt[3] = {oc, key, key};
  vtl_cpu_iter(3, ts, cdt, fn, NULL);
  return VTL_OK;
}

/* where: out = c ? a : b, by element size (no arithmetic) */
#define WHERE_LOOP(NAME, T)                                                                  \
  static void NAME(char **p, const int64_t *s, int64_t n, const void *ctx) {                  \
    (void)ctx;                                                                                \
    for (int64_t i = 0; i < n; i++)                                                           \
      *(T *)(p[0] + i * s[0]) = *(const uint8_t *)(p[1] + i * s[1]) ? *(const T *)(p[2] + i * s[2]) \
                                                                    : *(const T *)(p[3] + i * s[3]); \
  }
WHERE_LOOP(where1, uint8_t)
WHERE_LOOP(where2, uint16_t)
WHERE_LOOP(where4, uint32_t)
WHERE_LOOP(where8, uint64_t)

static vtl_status cpu_where(vtl_tensor *out, const vtl_tensor *cond, const vtl_tensor *a, const vtl_tensor *b,
                            vtl_dtype compute) {
  static const vtl_loop_fn by_size[9] = {[1] = where1, [2] = where2, [4] = where4, [8] = where8};
  const vtl_tensor *ts[4] = {out, cond, a, b};
  vtl_dtype cdt[4] = {compute, VTL_BOOL, compute, compute};
  vtl_cpu_iter(4, ts, cdt, by_size[vtl_dtype_size(compute)], NULL);
  return VTL_OK;
}

#define LERP_LOOP(NAME, T)                                                                   \
  static void NAME(char **p, const int64_t *s, int64_t n, const void *ctx) {                  \
    (void)ctx;                                                                                \
    for (int64_t i = 0; i < n; i++) {                                                         \
      T a = *(const T *)(p[1] + i * s[1]), b = *(const T *)(p[2] + i * s[2]);                 \
      T w = *(const T *)(p[3] + i * s[3]);                                                    \
      *(T *)(p[0] + i * s[0]) = a + w * (b - a);                                              \
    }                                                                                         \
  }
LERP_LOOP(lerp_f32, float)
LERP_LOOP(lerp_f64, double)

static vtl_status cpu_lerp(vtl_tensor *out, const vtl_tensor *a, const vtl_tensor *b, const vtl_tensor *w) {
  vtl_dtype c = out->dtype == VTL_F64 ? VTL_F64 : VTL_F32;
  const vtl_tensor *ts[4] = {out, a, b, w};
  vtl_dtype cdt[4] = {c, c, c, c};
  vtl_cpu_iter(4, ts, cdt, c == VTL_F64 ? lerp_f64 : lerp_f32, NULL);
  return VTL_OK;
}

#define FILL_LOOP(NAME, T)                                                                   \
  static void NAME(char **p, const int64_t *s, int64_t n, const void *ctx) {                  \
    T v;                                                                                      \
    memcpy(&v, ctx, sizeof v);                                                                \
    if (s[0] == sizeof(T)) { T *O = (T *)p[0]; for (int64_t i = 0; i < n; i++) O[i] = v; }    \
    else for (int64_t i = 0; i < n; i++) *(T *)(p[0] + i * s[0]) = v;                         \
  }
FILL_LOOP(fill1, uint8_t)
FILL_LOOP(fill2, uint16_t)
FILL_LOOP(fill4, uint32_t)
FILL_LOOP(fill8, uint64_t)

static vtl_status cpu_fill(vtl_tensor *out, double value) {
  static const vtl_loop_fn by_size[9] = {[1] = fill1, [2] = fill2, [4] = fill4, [8] = fill8};
  uint64_t bits = 0;
  vtl_store_from_double(&bits, out->dtype, value);
  if (out->dtype == VTL_I64 && value == (double)(int64_t)value) bits = (uint64_t)(int64_t)value;
  const vtl_tensor *ts[1] = {out};
  vtl_dtype cdt[1] = {out->dtype};
  vtl_cpu_iter(1, ts, cdt, by_size[vtl_dtype_size(out->dtype)], &bits);
  return VTL_OK;
}

/* fused in-place updates: p[0] = y (read and written), p[1] = y again (input view), p[2] = a,
   p[3] = b; ctx = the scalar already rounded to the compute type */
#define FUSED_LOOP(NAME, T, EXPR)                                                            \
  static void NAME(char **p, const int64_t *s, int64_t n, const void *ctx) {                  \
    const T v = *(const T *)ctx;                                                              \
    for (int64_t i = 0; i < n; i++) {                                                         \
      T y = *(const T *)(p[1] + i * s[1]), a = *(const T *)(p[2] + i * s[2]);                 \
      T b = *(const T *)(p[3] + i * s[3]);                                                    \
      (void)b;                                                                                \
      *(T *)(p[0] + i * s[0]) = (EXPR);                                                       \
    }                                                                                         \
  }
FUSED_LOOP(axpy_f32, float, fmaf(v, a, y))
FUSED_LOOP(axpy_f64, double, fma(v, a, y))
FUSED_LOOP(addcmul_f32, float, fmaf(v * a, b, y))
FUSED_LOOP(addcmul_f64, double, fma(v * a, b, y))
FUSED_LOOP(addcdiv_f32, float, y + (v * a) / b)
FUSED_LOOP(addcdiv_f64, double, y + (v * a) / b)

static vtl_status cpu_fused(vtl_fused_op op, vtl_tensor *y, const vtl_tensor *a, const vtl_tensor *b, double value) {
  static const vtl_loop_fn f32[] = {axpy_f32, addcmul_f32, addcdiv_f32}, f64[] = {axpy_f64, addcmul_f64, addcdiv_f64};
  vtl_dtype c = y->dtype == VTL_F64 ? VTL_F64 : VTL_F32;
  float vf = (float)value;
  const vtl_tensor *ts[4] = {y, y, a, b ? b : a};
  vtl_dtype cdt[4] = {c, c, c, c};
  vtl_cpu_iter(4, ts, cdt, c == VTL_F64 ? f64[op] : f32[op], c == VTL_F64 ? (const void *)&value : (const void *)&vf);
  return VTL_OK;
}

/* Hooks for the other CPU kernel files (reduce.c, matmul.c, index.c, random.c). */
vtl_status vtl_cpu_reduce(vtl_reduce_op op, vtl_tensor *out, vtl_tensor *idx, const vtl_tensor *x,
                          int64_t A, int64_t R, int64_t B, double param);
vtl_status vtl_cpu_cumsum(vtl_tensor *out, const vtl_tensor *x, int64_t A, int64_t R, int64_t B);
vtl_status vtl_cpu_matmul(vtl_tensor *out, const vtl_tensor *a, const vtl_tensor *b);
vtl_status vtl_cpu_gather(vtl_tensor *out, const vtl_tensor *x, int dim, const vtl_tensor *index);
vtl_status vtl_cpu_scatter(vtl_tensor *out, int dim, const vtl_tensor *index, const vtl_tensor *src, bool acc);
vtl_status vtl_cpu_sort(vtl_tensor *values, vtl_tensor *indices, const vtl_tensor *x, int64_t A, int64_t R,
                        bool descending);
vtl_status vtl_cpu_random(vtl_tensor *out, int kind, double lo, double hi, uint64_t seed, uint64_t offset);

/* positions (0-based) of the non-zero bytes of a contiguous bool tensor, in order */
static vtl_status cpu_nonzero_flat(vtl_tensor *out, const vtl_tensor *mask) {
  const uint8_t *m = vtl_tensor_data(mask);
  int64_t *o = vtl_tensor_data(out), n = vtl_tensor_numel(mask), k = 0, cap = vtl_tensor_numel(out);
  for (int64_t i = 0; i < n && k < cap; i++)
    if (m[i]) o[k++] = i;
  return VTL_OK;
}

void *vtl_cpu_alloc(size_t n);
void vtl_cpu_free(void *p, size_t n);
static void *cpu_alloc(size_t n, int dev) { (void)dev; return vtl_cpu_alloc(n); }
static void cpu_free(void *p, size_t n, int dev) { (void)dev; vtl_cpu_free(p, n); }
static size_t cpu_empty_cache(int dev) { (void)dev; return vtl_cpu_empty_cache(); }

const vtl_backend vtl_cpu_backend = {
  .name = "cpu",
  .alloc = cpu_alloc,
  .free = cpu_free,
  .empty_cache = cpu_empty_cache,
  .unary = cpu_unary,
  .binary = cpu_binary,
  .where = cpu_where,
  .lerp = cpu_lerp,
  .fill = cpu_fill,
  .reduce = vtl_cpu_reduce,
  .cumsum = vtl_cpu_cumsum,
  .matmul = vtl_cpu_matmul,
  .gather = vtl_cpu_gather,
  .scatter = vtl_cpu_scatter,
  .sort = vtl_cpu_sort,
  .random = vtl_cpu_random,
  .nonzero_flat = cpu_nonzero_flat,
  .fused = cpu_fused,
  .matmul_dtypes = 1u << VTL_F32 | 1u << VTL_F64 | 1u << VTL_I64,
  .matmul_half = vtl_cpu_matmul_half,
  .nn = &vtl_cpu_nn_backend,
};
