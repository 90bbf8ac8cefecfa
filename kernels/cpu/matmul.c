/* CPU matmul: batched GEMM through OpenBLAS (f32, f64), a plain loop for integers. */
#include <stdlib.h>
#include <string.h>
#include <omp.h>
#include <cblas.h>
#include <dnnl.h>
#include "iter.h"
#include "parallel.h"
#include "nn_norm.h"
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
  /* many small products: one per thread, BLAS single-threaded inside the parallel region;
     otherwise none (see VTL_FOR_THREADS) */
  int nt = batch > 1 && M * N * K < (int64_t)1 << 21 && !omp_in_parallel() ? omp_get_max_threads() : 1;
  VTL_FOR_THREADS(nt, i, batch, { gemm_at(&g, i, out, a, b, A, B, C, es); });
  return VTL_OK;
}

/* Multi-head self-attention of an inference layer, from the packed projection: qkv (B,N,3,H,D)
   contiguous (q, k, v for each token and head), out (B,N,H,D) = softmax(scale q kᵀ) v per
   (sample, head). One (sample, head) per thread at a time, its N x N scores in a per-thread
   buffer; the products read q, k, v and write out in place through their row strides. */
vtl_status vtl_cpu_attention_qkv(vtl_dtype dt, int64_t B, int64_t N, int64_t H, int64_t D, double scale,
                                 const void *qkv, void *out) {
  if (dt != VTL_F32 && dt != VTL_F64)
    return vtl_error_set(VTL_ERR_ARG, "attention: kernel supports f32 and f64, got %s", vtl_dtype_name(dt));
  int64_t pairs = B * H, ld = 3 * H * D;
  if (pairs == 0 || N == 0) return VTL_OK;
  size_t es = vtl_dtype_size(dt);
  int nt = omp_in_parallel() ? 1 : omp_get_max_threads();
  if (nt > pairs) nt = (int)pairs;
  size_t sb = (size_t)(N * N) * es;
  char *scores = malloc((size_t)nt * sb);
  if (!scores) return vtl_error_set(VTL_ERR_OOM, "attention: out of memory for %lld x %lld scores", (long long)N, (long long)N);
  VTL_FOR_THREADS(nt, p, pairs, {
    int64_t b = p / H, h = p % H;
    char *S = scores + (size_t)omp_get_thread_num() * sb;
    if (dt == VTL_F32) {
      const float *q = (const float *)qkv + b * N * ld + h * D, *k = q + H * D, *v = q + 2 * H * D;
      float *o = (float *)out + b * N * H * D + h * D, *s = (float *)S;
      dnnl_sgemm('N', 'T', N, N, D, (float)scale, q, ld, k, ld, 0.0f, s, N);
      vtl_cpu_softmax_forward(dt, s, s, N, N, 1, false);
      dnnl_sgemm('N', 'N', N, D, N, 1.0f, s, N, v, ld, 0.0f, o, H * D);
    } else {
      const double *q = (const double *)qkv + b * N * ld + h * D, *k = q + H * D, *v = q + 2 * H * D;
      double *o = (double *)out + b * N * H * D + h * D, *s = (double *)S;
      cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)N, (int)N, (int)D, scale, q, (int)ld, k, (int)ld, 0.0,
                  s, (int)N);
      vtl_cpu_softmax_forward(dt, s, s, N, N, 1, false);
      cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)N, (int)D, (int)N, 1.0, s, (int)N, v, (int)ld, 0.0, o,
                  (int)(H * D));
    }
  });
  free(scores);
  return VTL_OK;
}
