/* CPU matmul: batched GEMM through OpenBLAS (f32, f64), a plain loop for integers. */
#include <stdlib.h>
#include <string.h>
#include <omp.h>
#include <cblas.h>
#include <dnnl.h>
#include "iter.h"
#include "backend.h"
#include "gemm.h"

static int blas_layout(int64_t rows, int64_t cols, int64_t sr, int64_t sc, CBLAS_TRANSPOSE *tr, int64_t *ld) {
  int t;
  if (!vtl_gemm_layout(rows, cols, sr, sc, &t, ld)) return 0;
  *tr = t ? CblasTrans : CblasNoTrans;
  return 1;
}

typedef struct {
  const char *a, *b;
  char *c;
  int64_t M, N, K;
  CBLAS_TRANSPOSE ta, tb;
  int64_t lda, ldb;
  vtl_dtype dt;
} gemm_t;

/* One product. Large f32 products go to oneDNN's sgemm, measured 3-6% faster than OpenBLAS's
   on 1024^2 and 2048^2 here (tests/bench); the rest to OpenBLAS. */
static void gemm_one(const gemm_t *g) {
  if (g->dt == VTL_F32 && g->M * g->N * g->K >= ((int64_t)1 << 24) &&
      dnnl_sgemm(g->ta == CblasTrans ? 'T' : 'N', g->tb == CblasTrans ? 'T' : 'N', g->M, g->N, g->K, 1.0f,
                 (const float *)g->a, g->lda, (const float *)g->b, g->ldb, 0.0f, (float *)g->c, g->N) == dnnl_success)
    return;
  if (g->dt == VTL_F32)
    cblas_sgemm(CblasRowMajor, g->ta, g->tb, (int)g->M, (int)g->N, (int)g->K, 1.0f, (const float *)g->a,
                (int)g->lda, (const float *)g->b, (int)g->ldb, 0.0f, (float *)g->c, (int)g->N);
  else
    cblas_dgemm(CblasRowMajor, g->ta, g->tb, (int)g->M, (int)g->N, (int)g->K, 1.0, (const double *)g->a,
                (int)g->lda, (const double *)g->b, (int)g->ldb, 0.0, (double *)g->c, (int)g->N);
}

/* product i of a batched matmul (see vtl_cpu_matmul) */
static void gemm_at(const gemm_t *g, int64_t i, const vtl_tensor *out, const vtl_tensor *a, const vtl_tensor *b,
                    const char *A, const char *B, char *C, size_t es) {
  int nd = out->ndim;
  int64_t oa = 0, ob = 0, rem = i;
  for (int d = nd - 3; d >= 0; d--) {
    int64_t k = rem % out->shape[d];
    rem /= out->shape[d];
    oa += k * a->strides[d];
    ob += k * b->strides[d];
  }
  gemm_t gi = *g;
  gi.a = A + oa * (int64_t)es;
  gi.b = B + ob * (int64_t)es;
  gi.c = C + i * g->M * g->N * (int64_t)es;
  gemm_one(&gi);
}

/* out (batch..., M, N) contiguous; a (batch..., M, K), b (batch..., K, N) with the same batch
   shape (broadcast views). Matrices whose strides BLAS cannot take are made contiguous by the
   op layer before the call. */
vtl_status vtl_cpu_matmul(vtl_tensor *out, const vtl_tensor *a, const vtl_tensor *b) {
  int nd = out->ndim;
  int64_t M = out->shape[nd - 2], N = out->shape[nd - 1], K = a->shape[nd - 1];
  int64_t batch = 1;
  for (int d = 0; d < nd - 2; d++) batch *= out->shape[d];
  if (M == 0 || N == 0 || batch == 0) return VTL_OK;
  vtl_dtype dt = out->dtype;
  size_t es = vtl_dtype_size(dt);
  if (K == 0) { memset(vtl_tensor_data(out), 0, (size_t)(batch * M * N) * es); return VTL_OK; }
  if (dt == VTL_I64) {
    const int64_t *A = vtl_tensor_data(a), *B = vtl_tensor_data(b);
    int64_t *C = vtl_tensor_data(out);
    for (int64_t i = 0; i < batch; i++) {
      int64_t oa = 0, ob = 0, rem = i;
      for (int d = nd - 3; d >= 0; d--) {
        int64_t k = rem % out->shape[d]; rem /= out->shape[d];
        oa += k * a->strides[d]; ob += k * b->strides[d];
      }
      for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
          uint64_t s = 0;
          for (int64_t k = 0; k < K; k++)
            s += (uint64_t)A[oa + m * a->strides[nd - 2] + k * a->strides[nd - 1]] *
                 (uint64_t)B[ob + k * b->strides[nd - 2] + n * b->strides[nd - 1]];
          C[(i * M + m) * N + n] = (int64_t)s;
        }
    }
    return VTL_OK;
  }
  if (dt != VTL_F32 && dt != VTL_F64)
    return vtl_error_set(VTL_ERR_ARG, "matmul: kernel expects f32, f64 or i64, got %s", vtl_dtype_name(dt));
  gemm_t g = {.M = M, .N = N, .K = K, .dt = dt};
  if (!blas_layout(M, K, a->strides[nd - 2], a->strides[nd - 1], &g.ta, &g.lda) ||
      !blas_layout(K, N, b->strides[nd - 2], b->strides[nd - 1], &g.tb, &g.ldb))
    return vtl_error_set(VTL_ERR_ARG, "matmul: operand layout not supported by the kernel");
  const char *A = vtl_tensor_data(a), *B = vtl_tensor_data(b);
  char *C = vtl_tensor_data(out);
  /* many small products: one per thread, BLAS single-threaded inside the parallel region.
     Otherwise no parallel region at all: OpenBLAS called inside one, even an inactive one
     (if (0)), ran a 197x64x197 product 3.5x slower on 2 threads. */
  int nt = batch > 1 && M * N * K < (int64_t)1 << 21 && !omp_in_parallel() ? omp_get_max_threads() : 1;
  if (nt > 1) {
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t i = 0; i < batch; i++) gemm_at(&g, i, out, a, b, A, B, C, es);
  } else {
    for (int64_t i = 0; i < batch; i++) gemm_at(&g, i, out, a, b, A, B, C, es);
  }
  return VTL_OK;
}
