/* How a strided matrix maps onto a BLAS call (row-major), shared by the op layer, which copies
   operands that do not map, and the GEMM kernels. */
#ifndef VTL_GEMM_H
#define VTL_GEMM_H
#include <stdint.h>

/* A (rows, cols) matrix with element strides (sr, sc): returns 1 with *trans = 0 and the
   leading dim when rows are contiguous, *trans = 1 when columns are (a transposed view),
   0 when neither holds. */
static inline int vtl_gemm_layout(int64_t rows, int64_t cols, int64_t sr, int64_t sc, int *trans, int64_t *ld) {
  int64_t r1 = rows > 1 ? rows : 1, c1 = cols > 1 ? cols : 1;
  if ((sc == 1 || cols == 1) && (sr >= c1 || rows == 1)) {
    *trans = 0;
    *ld = rows == 1 ? c1 : sr;
    if (*ld < cols) *ld = cols;
    return *ld <= 0x7fffffff;
  }
  if ((sr == 1 || rows == 1) && (sc >= r1 || cols == 1)) {
    *trans = 1;
    *ld = cols == 1 ? r1 : sc;
    if (*ld < rows) *ld = rows;
    return *ld <= 0x7fffffff;
  }
  return 0;
}
#endif
