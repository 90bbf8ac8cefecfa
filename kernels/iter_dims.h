/*
 * The dims an elementwise loop walks, shared by the CPU and CUDA iterators: operand 0 is the
 * output, the inputs are views already broadcast to it. Size-1 dims are dropped; the rest are
 * ordered by the output's memory order (largest stride first, ties kept in place), so that an
 * output laid out channels-last is walked in memory order; then dims are merged where every
 * operand steps through them as one.
 */
#ifndef VTL_ITER_DIMS_H
#define VTL_ITER_DIMS_H
#include "core.h"

/* Fills shape[nd] and st[o][nd] (byte strides) and returns nd (0: one element or none);
   *numel gets the element count. */
static inline int vtl_iter_dims(int nops, const vtl_tensor *const *ts, int64_t *shape, int64_t (*st)[VTL_MAX_DIMS],
                                int64_t *numel) {
  const vtl_tensor *out = ts[0];
  int k = 0;
  *numel = 1;
  for (int d = 0; d < out->ndim; d++) {
    *numel *= out->shape[d];
    if (out->shape[d] == 1) continue;
    shape[k] = out->shape[d];
    for (int o = 0; o < nops; o++) st[o][k] = ts[o]->strides[d] * (int64_t)vtl_dtype_size(ts[o]->dtype);
    k++;
  }
  /* insertion sort by the output's stride, largest first (stable: a contiguous output keeps
     its order) */
  for (int i = 1; i < k; i++) {
    int64_t a0 = st[0][i] < 0 ? -st[0][i] : st[0][i];
    int j = i;
    while (j > 0) {
      int64_t b0 = st[0][j - 1] < 0 ? -st[0][j - 1] : st[0][j - 1];
      if (b0 >= a0) break;
      j--;
    }
    if (j == i) continue;
    int64_t sh = shape[i], sv[VTL_MAX_DIMS];
    for (int o = 0; o < nops; o++) sv[o] = st[o][i];
    for (int m = i; m > j; m--) {
      shape[m] = shape[m - 1];
      for (int o = 0; o < nops; o++) st[o][m] = st[o][m - 1];
    }
    shape[j] = sh;
    for (int o = 0; o < nops; o++) st[o][j] = sv[o];
  }
  int nd = 0;
  for (int d = 0; d < k; d++) {
    if (nd > 0) {
      int ok = 1;
      for (int o = 0; o < nops && ok; o++) ok = st[o][nd - 1] == st[o][d] * shape[d];
      if (ok) {
        shape[nd - 1] *= shape[d];
        for (int o = 0; o < nops; o++) st[o][nd - 1] = st[o][d];
        continue;
      }
    }
    shape[nd] = shape[d];
    for (int o = 0; o < nops; o++) st[o][nd] = st[o][d];
    nd++;
  }
  return nd;
}

#endif
