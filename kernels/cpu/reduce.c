/* CPU reductions and scans over a contiguous x viewed as (A, R, B): reduce R. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>
#include "iter.h"
#include "backend.h"

/* Sum of n contiguous floats: blocks of 1024 summed in 32 float lanes (vectorisable without
   reassociation), block sums accumulated in double. */
static double sum_f32(const float *x, int64_t n) {
  double s = 0;
  int64_t i = 0;
  for (; i + 1024 <= n; i += 1024) {
    float acc[32] = {0};
    for (int64_t k = 0; k < 1024; k += 32)
      for (int j = 0; j < 32; j++) acc[j] += x[i + k + j];
    for (int w = 16; w >= 1; w /= 2) /* pairwise, stays in vector registers */
      for (int j = 0; j < w; j++) acc[j] += acc[j + w];
    s += acc[0];
  }
  for (; i < n; i++) s += x[i];
  return s;
}

static double sum_f64(const double *x, int64_t n) {
  double acc[8] = {0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; j++) acc[j] += x[i + j];
  double s = 0;
  for (; i < n; i++) s += x[i];
  for (int j = 0; j < 8; j++) s += acc[j];
  return s;
}

typedef struct { double v; int64_t i; } vi_t;

/* One output of a float reduction: n values from p with element stride s. */
static vi_t reduce_row_float(vtl_reduce_op op, const void *base, vtl_dtype dt, int64_t n, int64_t s, double param) {
  const float *xf = base;
  const double *xd = base;
#define LD(k) (dt == VTL_F32 ? (double)xf[(k) * s] : xd[(k) * s])
  vi_t r = {0, 0};
  switch (op) {
  case VTL_RED_SUM: case VTL_RED_MEAN:
    if (s == 1) r.v = dt == VTL_F32 ? sum_f32(xf, n) : sum_f64(xd, n);
    else for (int64_t k = 0; k < n; k++) r.v += LD(k);
    if (op == VTL_RED_MEAN) r.v = n ? r.v / (double)n : NAN;
    break;
  case VTL_RED_PROD:
    r.v = 1;
    for (int64_t k = 0; k < n; k++) r.v *= LD(k);
    break;
  case VTL_RED_MAX: case VTL_RED_ARGMAX: case VTL_RED_MIN: case VTL_RED_ARGMIN: {
    int want_max = op == VTL_RED_MAX || op == VTL_RED_ARGMAX;
    r.v = LD(0);
    for (int64_t k = 1; k < n && r.v == r.v; k++) {
      double v = LD(k);
      if (v != v || (want_max ? v > r.v : v < r.v)) { r.v = v; r.i = k; }
    }
    break;
  }
  case VTL_RED_VAR: {
    double m = 0;
    for (int64_t k = 0; k < n; k++) m += LD(k);
    m /= (double)n;
    double ss = 0;
    for (int64_t k = 0; k < n; k++) { double d = LD(k) - m; ss += d * d; }
    double dof = (double)n - param;
    r.v = ss / (dof > 0 ? dof : 0); /* as PyTorch: no degrees of freedom gives nan or inf */
    break;
  }
  case VTL_RED_NORM:
    if (isinf(param)) {
      for (int64_t k = 0; k < n; k++) { double v = fabs(LD(k)); if (v > r.v || v != v) r.v = v; }
    } else if (param == 0) {
      for (int64_t k = 0; k < n; k++) r.v += LD(k) != 0;
    } else if (param == 1) {
      for (int64_t k = 0; k < n; k++) r.v += fabs(LD(k));
    } else if (param == 2) {
      for (int64_t k = 0; k < n; k++) { double v = LD(k); r.v += v * v; }
      r.v = sqrt(r.v);
    } else {
      for (int64_t k = 0; k < n; k++) r.v += pow(fabs(LD(k)), param);
      r.v = pow(r.v, 1.0 / param);
    }
    break;
  case VTL_RED_LOGSUMEXP: {
    double m = -INFINITY;
    for (int64_t k = 0; k < n; k++) { double v = LD(k); if (v > m || v != v) m = v; }
    if (m != m || isinf(m)) { r.v = m; break; }
    double ssum = 0;
    for (int64_t k = 0; k < n; k++) ssum += exp(LD(k) - m);
    r.v = m + log(ssum);
    break;
  }
  case VTL_RED_ANY:
    for (int64_t k = 0; k < n && !r.v; k++) r.v = LD(k) != 0;
    break;
  case VTL_RED_ALL:
    r.v = 1;
    for (int64_t k = 0; k < n && r.v; k++) r.v = LD(k) != 0;
    break;
  default: break;
  }
#undef LD
  return r;
}

typedef struct { int64_t v; int64_t i; } ii_t;

static ii_t reduce_row_int(vtl_reduce_op op, const int64_t *x, int64_t n, int64_t s) {
  ii_t r = {0, 0};
  switch (op) {
  case VTL_RED_SUM: for (int64_t k = 0; k < n; k++) r.v = (int64_t)((uint64_t)r.v + (uint64_t)x[k * s]); break;
  case VTL_RED_PROD: r.v = 1; for (int64_t k = 0; k < n; k++) r.v = (int64_t)((uint64_t)r.v * (uint64_t)x[k * s]); break;
  case VTL_RED_MAX: case VTL_RED_ARGMAX:
    r.v = x[0];
    for (int64_t k = 1; k < n; k++) if (x[k * s] > r.v) { r.v = x[k * s]; r.i = k; }
    break;
  case VTL_RED_MIN: case VTL_RED_ARGMIN:
    r.v = x[0];
    for (int64_t k = 1; k < n; k++) if (x[k * s] < r.v) { r.v = x[k * s]; r.i = k; }
    break;
  case VTL_RED_ANY: for (int64_t k = 0; k < n && !r.v; k++) r.v = x[k * s] != 0; break;
  case VTL_RED_ALL: r.v = 1; for (int64_t k = 0; k < n && r.v; k++) r.v = x[k * s] != 0; break;
  default: break;
  }
  return r;
}

/* Full f32 sum over many elements: partial sums of fixed 64K-element chunks, added in order,
   so the result does not depend on the number of threads. */
static double sum_f32_parallel(const float *x, int64_t n) {
  const int64_t chunk = 65536;
  int64_t nc = (n + chunk - 1) / chunk;
  if (nc <= 1) return sum_f32(x, n);
  double stack_part[256], *part = nc <= 256 ? stack_part : malloc((size_t)nc * sizeof *part);
  if (!part) { /* serial, same order */
    double s = 0;
    for (int64_t c = 0; c < nc; c++) s += sum_f32(x + c * chunk, c == nc - 1 ? n - c * chunk : chunk);
    return s;
  }
  int nt = omp_in_parallel() ? 1 : omp_get_max_threads();
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t c = 0; c < nc; c++) part[c] = sum_f32(x + c * chunk, c == nc - 1 ? n - c * chunk : chunk);
  double s = 0;
  for (int64_t c = 0; c < nc; c++) s += part[c];
  if (part != stack_part) free(part);
  return s;
}

vtl_status vtl_cpu_reduce(vtl_reduce_op op, vtl_tensor *out, vtl_tensor *idx, const vtl_tensor *x,
                          int64_t A, int64_t R, int64_t B, double param) {
  const char *xp = vtl_tensor_data(x);
  char *op_ = vtl_tensor_data(out);
  int64_t *ip = idx ? vtl_tensor_data(idx) : NULL;
  vtl_dtype od = out->dtype;
  size_t es = vtl_dtype_size(x->dtype), os = vtl_dtype_size(od);
  int is_arg = op == VTL_RED_ARGMAX || op == VTL_RED_ARGMIN;
  if (x->dtype == VTL_F32 && (op == VTL_RED_SUM || op == VTL_RED_MEAN) && A * B == 1) {
    double s = sum_f32_parallel((const float *)xp, R);
    vtl_store_from_double(op_, od, op == VTL_RED_MEAN ? (R ? s / (double)R : NAN) : s);
    return VTL_OK;
  }
  if (x->dtype == VTL_F32 && (op == VTL_RED_SUM || op == VTL_RED_MEAN) && B > 1) {
    int nt = A * R * B >= (int64_t)VTL_GRAIN * 2 && !omp_in_parallel() ? omp_get_max_threads() : 1;
    int fail = 0;
#pragma omp parallel num_threads(nt)
    {
      /* split columns across threads within each a */
      int t = omp_get_thread_num(), m = omp_get_num_threads();
      int64_t b0 = B * t / m, b1 = B * (t + 1) / m;
      double *acc = malloc((size_t)(b1 - b0 + 1) * sizeof *acc);
      if (!acc) {
#pragma omp atomic write
        fail = 1;
      } else {
        for (int64_t a = 0; a < A && b1 > b0; a++) {
          memset(acc, 0, (size_t)(b1 - b0) * sizeof *acc);
          for (int64_t r = 0; r < R; r++) {
            const float *row = (const float *)xp + (a * R + r) * B + b0;
            for (int64_t b = 0; b < b1 - b0; b++) acc[b] += row[b];
          }
          for (int64_t b = 0; b < b1 - b0; b++)
            vtl_store_from_double(op_ + (a * B + b0 + b) * (int64_t)os, od,
                                  op == VTL_RED_MEAN ? (R ? acc[b] / (double)R : NAN) : acc[b]);
        }
        free(acc);
      }
    }
    return fail ? vtl_error_set(VTL_ERR_OOM, "reduce: out of memory") : VTL_OK;
  }
  int isfloat = x->dtype == VTL_F32 || x->dtype == VTL_F64;
  if (!isfloat && x->dtype != VTL_I64)
    return vtl_error_set(VTL_ERR_ARG, "reduce: kernel expects f32, f64 or i64, got %s", vtl_dtype_name(x->dtype));
  int64_t nout = A * B;
  int nt = nout * R >= (int64_t)VTL_GRAIN && nout > 1 && !omp_in_parallel() ? omp_get_max_threads() : 1;
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t o = 0; o < nout; o++) {
    int64_t a = o / B, b = o % B;
    const char *row = xp + ((a * R) * B + b) * (int64_t)es;
    char *dst = op_ + o * (int64_t)os;
    if (isfloat) {
      vi_t r = reduce_row_float(op, row, x->dtype, R, B, param);
      if (is_arg) *(int64_t *)dst = r.i;
      else vtl_store_from_double(dst, od, r.v);
      if (ip) ip[o] = r.i;
    } else {
      ii_t r = reduce_row_int(op, (const int64_t *)row, R, B);
      if (is_arg) *(int64_t *)dst = r.i;
      else if (od == VTL_I64) *(int64_t *)dst = r.v;
      else vtl_store_from_double(dst, od, (double)r.v);
      if (ip) ip[o] = r.i;
    }
  }
  return VTL_OK;
}

vtl_status vtl_cpu_cumsum(vtl_tensor *out, const vtl_tensor *x, int64_t A, int64_t R, int64_t B) {
  int nt = A * B > 1 && A * R * B >= (int64_t)VTL_GRAIN && !omp_in_parallel() ? omp_get_max_threads() : 1;
  const char *xp = vtl_tensor_data(x);
  char *op = vtl_tensor_data(out);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t o = 0; o < A * B; o++) {
    int64_t a = o / B, b = o % B, base = a * R * B + b;
    if (x->dtype == VTL_I64) {
      int64_t acc = 0;
      for (int64_t r = 0; r < R; r++) {
        acc = (int64_t)((uint64_t)acc + (uint64_t)((const int64_t *)xp)[base + r * B]);
        ((int64_t *)op)[base + r * B] = acc;
      }
    } else if (x->dtype == VTL_F32) {
      double acc = 0;
      for (int64_t r = 0; r < R; r++) {
        acc += ((const float *)xp)[base + r * B];
        ((float *)op)[base + r * B] = (float)acc;
      }
    } else {
      double acc = 0;
      for (int64_t r = 0; r < R; r++) {
        acc += ((const double *)xp)[base + r * B];
        ((double *)op)[base + r * B] = acc;
      }
    }
  }
  return VTL_OK;
}
