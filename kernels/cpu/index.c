/* CPU gather / scatter (dtype-agnostic, by element size) and stable sort. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>
#include "iter.h"
#include "backend.h"

static inline void copy_elem(char *dst, const char *src, size_t es) {
  switch (es) {
  case 1: *dst = *src; break;
  case 2: memcpy(dst, src, 2); break;
  case 4: memcpy(dst, src, 4); break;
  default: memcpy(dst, src, 8); break;
  }
}

/* Offset (elements) of logical position i of a tensor of shape `shape` and strides `st`. */
static inline int64_t offset_of(int64_t i, int nd, const int64_t *shape, const int64_t *st, int64_t *coord) {
  int64_t off = 0;
  for (int d = nd - 1; d >= 0; d--) {
    coord[d] = i % shape[d];
    i /= shape[d];
    off += coord[d] * st[d];
  }
  return off;
}

/* out (shape of index): out[..i_d..] = x[..index[..]..] along dim; indices checked by the op layer. */
vtl_status vtl_cpu_gather(vtl_tensor *out, const vtl_tensor *x, int dim, const vtl_tensor *index) {
  int64_t n = vtl_tensor_numel(out);
  size_t es = vtl_dtype_size(x->dtype);
  const char *xp = vtl_tensor_data(x);
  const int64_t *ip = vtl_tensor_data(index);
  char *op = vtl_tensor_data(out);
  int nd = out->ndim;
  int nt = n >= VTL_GRAIN && !omp_in_parallel() ? omp_get_max_threads() : 1;
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t i = 0; i < n; i++) {
    int64_t c[VTL_MAX_DIMS];
    int64_t ioff = offset_of(i, nd, index->shape, index->strides, c);
    int64_t xoff = 0;
    for (int d = 0; d < nd; d++) xoff += (d == dim ? ip[ioff] : c[d]) * x->strides[d];
    int64_t ooff = 0;
    for (int d = 0; d < nd; d++) ooff += c[d] * out->strides[d];
    copy_elem(op + ooff * (int64_t)es, xp + xoff * (int64_t)es, es);
  }
  return VTL_OK;
}

/* out[..index[..]..] = src[..] (or += when accumulate). Serial: duplicate indices must not race. */
vtl_status vtl_cpu_scatter(vtl_tensor *out, int dim, const vtl_tensor *index, const vtl_tensor *src, bool acc) {
  int64_t n = vtl_tensor_numel(index);
  size_t es = vtl_dtype_size(out->dtype);
  const char *sp = vtl_tensor_data(src);
  const int64_t *ip = vtl_tensor_data(index);
  char *op = vtl_tensor_data(out);
  int nd = index->ndim;
  for (int64_t i = 0; i < n; i++) {
    int64_t c[VTL_MAX_DIMS];
    int64_t ioff = offset_of(i, nd, index->shape, index->strides, c);
    int64_t soff = 0, ooff = 0;
    for (int d = 0; d < nd; d++) {
      soff += c[d] * src->strides[d];
      ooff += (d == dim ? ip[ioff] : c[d]) * out->strides[d];
    }
    char *dst = op + ooff * (int64_t)es;
    const char *s = sp + soff * (int64_t)es;
    if (!acc) copy_elem(dst, s, es);
    else if (out->dtype == VTL_I64) *(int64_t *)dst += *(const int64_t *)s;
    else if (out->dtype == VTL_I32) *(int32_t *)dst += *(const int32_t *)s;
    else vtl_store_from_double(dst, out->dtype, vtl_load_as_double(dst, out->dtype) + vtl_load_as_double(s, out->dtype));
  }
  return VTL_OK;
}

/* ---- stable merge sort of indices by key; NaN sorts as the largest value ---- */
typedef struct { const double *kd; const int64_t *ki; int desc; } sortkey_t;

static inline int before(const sortkey_t *k, int64_t a, int64_t b) {
  if (k->kd) {
    double x = k->kd[a], y = k->kd[b];
    if (k->desc) return (x != x && y == y) || x > y;
    return (x == x && y != y) || x < y;
  }
  return k->desc ? k->ki[a] > k->ki[b] : k->ki[a] < k->ki[b];
}

static void merge_sort(int64_t *idx, int64_t *tmp, int64_t n, const sortkey_t *k) {
  for (int64_t w = 1; w < n; w *= 2) {
    for (int64_t lo = 0; lo < n; lo += 2 * w) {
      int64_t mid = lo + w < n ? lo + w : n, hi = lo + 2 * w < n ? lo + 2 * w : n;
      int64_t i = lo, j = mid, o = lo;
      while (i < mid && j < hi) tmp[o++] = before(k, idx[j], idx[i]) ? idx[j++] : idx[i++];
      while (i < mid) tmp[o++] = idx[i++];
      while (j < hi) tmp[o++] = idx[j++];
    }
    memcpy(idx, tmp, (size_t)n * sizeof *idx);
  }
}

/* x contiguous (A, R) of f64 or i64 keys (the op layer converts); values same dtype as x. */
vtl_status vtl_cpu_sort(vtl_tensor *values, vtl_tensor *indices, const vtl_tensor *x, int64_t A, int64_t R,
                        bool descending) {
  int isf = x->dtype == VTL_F64;
  if (!isf && x->dtype != VTL_I64) return vtl_error_set(VTL_ERR_ARG, "sort: kernel expects f64 or i64 keys");
  const char *xp = vtl_tensor_data(x);
  char *vp = vtl_tensor_data(values);
  int64_t *ip = vtl_tensor_data(indices);
  int fail = 0;
  int nt = A > 1 && A * R >= VTL_GRAIN && !omp_in_parallel() ? omp_get_max_threads() : 1;
#pragma omp parallel num_threads(nt)
  {
    int64_t *tmp = malloc((size_t)(R ? R : 1) * sizeof *tmp);
    if (!tmp) {
#pragma omp atomic write
      fail = 1;
    }
#pragma omp for schedule(static)
    for (int64_t a = 0; a < A; a++) {
      if (!tmp) continue;
      int64_t *idx = ip + a * R;
      for (int64_t r = 0; r < R; r++) idx[r] = r;
      sortkey_t k = {isf ? (const double *)xp + a * R : NULL, isf ? NULL : (const int64_t *)xp + a * R, descending};
      merge_sort(idx, tmp, R, &k);
      for (int64_t r = 0; r < R; r++) {
        if (isf) ((double *)vp)[a * R + r] = k.kd[idx[r]];
        else ((int64_t *)vp)[a * R + r] = k.ki[idx[r]];
      }
    }
    free(tmp);
  }
  return fail ? vtl_error_set(VTL_ERR_OOM, "sort: out of memory") : VTL_OK;
}
