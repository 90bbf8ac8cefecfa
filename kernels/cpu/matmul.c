/* CPU matmul: batched GEMM through OpenBLAS (f32, f64), a plain loop for integers. */
#include <math.h>
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
#include "nn_conv.h"

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

/* ---- scaled dot-product attention ----
   Each (sample, head) pair runs on one thread with BLAS single-threaded inside the parallel
   region, its L x S scores in per-thread buffers; q, k, v, out and the gradients are read and
   written in place through their row strides. */

typedef struct {
  vtl_dtype dt;
  int64_t L, S, E, Ev;
  double scale;
  bool causal;
  int64_t ldq, ldk, ldv, ldo; /* row strides of q, k, v and out (and of their gradients) */
} attn_t;

/* row-major C (M x N, row stride ldc) = alpha op(A) op(B): oneDNN's sgemm for f32 (OpenBLAS if
   it refuses), OpenBLAS's dgemm for f64 */
static void gemm_rm(vtl_dtype dt, char ta, char tb, int64_t M, int64_t N, int64_t K, double alpha, const void *A,
                    int64_t lda, const void *B, int64_t ldb, void *C, int64_t ldc) {
  CBLAS_TRANSPOSE cta = ta == 'T' ? CblasTrans : CblasNoTrans, ctb = tb == 'T' ? CblasTrans : CblasNoTrans;
  if (dt == VTL_F32) {
    if (dnnl_sgemm(ta, tb, M, N, K, (float)alpha, A, lda, B, ldb, 0.0f, C, ldc) != dnnl_success)
      cblas_sgemm(CblasRowMajor, cta, ctb, (int)M, (int)N, (int)K, (float)alpha, A, (int)lda, B, (int)ldb, 0.0f, C,
                  (int)ldc);
    return;
  }
  cblas_dgemm(CblasRowMajor, cta, ctb, (int)M, (int)N, (int)K, alpha, A, (int)lda, B, (int)ldb, 0.0, C, (int)ldc);
}

/* s (L x S) = scale q kᵀ, the keys after each query's position at -inf when causal */
#define ATTN_SCORES(T)                                                                  \
  do {                                                                                  \
    gemm_rm(a->dt, 'N', 'T', a->L, a->S, a->E, a->scale, q, a->ldq, k, a->ldk, s, a->S); \
    if (a->causal)                                                                      \
      for (int64_t i = 0; i < a->L; i++)                                                \
        for (int64_t j = i + 1; j < a->S; j++) ((T *)s)[i * a->S + j] = (T)-INFINITY;   \
  } while (0)

/* out = softmax(s) v, the normalisation applied to out's rows after the product (L x Ev
   multiplies, not L x S); lse (L) or NULL: the rows' log-sum-exp; s: an L x S buffer followed by
   L elements */
#define ATTN_NORMALISE(T)                                                               \
  for (int64_t i = 0; i < a->L; i++) {                                                  \
    T *orow = (T *)out + i * a->ldo, f = ((const T *)inv)[i];                           \
    _Pragma("omp simd")                                                                 \
    for (int64_t e = 0; e < a->Ev; e++) orow[e] *= f;                                   \
  }
static void attn_pair_forward(const attn_t *a, const void *q, const void *k, const void *v, void *out, void *lse,
                              void *s) {
  void *inv = (char *)s + (size_t)(a->L * a->S) * vtl_dtype_size(a->dt);
  if (a->dt == VTL_F32) ATTN_SCORES(float);
  else ATTN_SCORES(double);
  vtl_cpu_softmax_rows(a->dt, s, s, a->L, a->S, lse, inv);
  gemm_rm(a->dt, 'N', 'N', a->L, a->Ev, a->S, 1.0, s, a->S, v, a->ldv, out, a->ldo);
  if (a->dt == VTL_F32) { ATTN_NORMALISE(float) } else { ATTN_NORMALISE(double) }
}

/* p = exp(s - lse) from the scores (0 where masked); then dp = p ∘ (g vᵀ - rowsum(g ∘ out)) */
#define ATTN_PROBS(T, EXPF)                                                             \
  for (int64_t i = 0; i < a->L; i++) {                                                  \
    T *pr = (T *)p + i * a->S, l = ((const T *)lse)[i];                                 \
    _Pragma("omp simd")                                                                 \
    for (int64_t j = 0; j < a->S; j++) pr[j] = EXPF(pr[j] - l);                         \
  }
#define ATTN_DSCORES(T)                                                                 \
  for (int64_t i = 0; i < a->L; i++) {                                                  \
    const T *gr = (const T *)g + i * a->ldo, *orow = (const T *)out + i * a->ldo;       \
    double d = 0;                                                                       \
    for (int64_t e = 0; e < a->Ev; e++) d += (double)gr[e] * orow[e];                   \
    T dd = (T)d, *pr = (T *)p + i * a->S, *dr = (T *)dp + i * a->S;                     \
    _Pragma("omp simd")                                                                 \
    for (int64_t j = 0; j < a->S; j++) dr[j] = pr[j] * (dr[j] - dd);                    \
  }

/* gradients of one pair: dq (L x E, stride ldq), dk (S x E, ldk), dv (S x Ev, ldv); p and dp are
   L x S buffers */
static void attn_pair_backward(const attn_t *a, const void *g, const void *q, const void *k, const void *v,
                               const void *out, const void *lse, void *dq, void *dk, void *dv, void *p, void *dp) {
  void *s = p;
  if (a->dt == VTL_F32) {
    ATTN_SCORES(float);
    ATTN_PROBS(float, vtl_cpu_expf)
  } else {
    ATTN_SCORES(double);
    ATTN_PROBS(double, exp)
  }
  gemm_rm(a->dt, 'T', 'N', a->S, a->Ev, a->L, 1.0, p, a->S, g, a->ldo, dv, a->ldv);
  gemm_rm(a->dt, 'N', 'T', a->L, a->S, a->Ev, 1.0, g, a->ldo, v, a->ldv, dp, a->S);
  if (a->dt == VTL_F32) { ATTN_DSCORES(float) } else { ATTN_DSCORES(double) }
  gemm_rm(a->dt, 'N', 'N', a->L, a->E, a->S, a->scale, dp, a->S, k, a->ldk, dq, a->ldq);
  gemm_rm(a->dt, 'T', 'N', a->S, a->E, a->L, a->scale, dp, a->S, q, a->ldq, dk, a->ldk);
}

/* per-thread score buffers for `pairs` pairs: nbuf buffers of L x S (and L more) elements each
   per thread */
static char *attn_buffers(const attn_t *a, int64_t pairs, int nbuf, int *nt, size_t *bytes) {
  *nt = omp_in_parallel() ? 1 : omp_get_max_threads();
  if (*nt > pairs) *nt = (int)pairs;
  *bytes = (size_t)(a->L * a->S + a->L) * vtl_dtype_size(a->dt);
  char *buf = malloc((size_t)*nt * (size_t)nbuf * *bytes);
  if (!buf)
    vtl_error_set(VTL_ERR_OOM, "attention: out of memory for %lld x %lld scores", (long long)a->L, (long long)a->S);
  return buf;
}

static vtl_status attn_check_dtype(vtl_dtype dt) {
  if (dt == VTL_F32 || dt == VTL_F64) return VTL_OK;
  return vtl_error_set(VTL_ERR_ARG, "attention: kernel supports f32, f64, f16 and bf16, got %s", vtl_dtype_name(dt));
}

static vtl_status attn_forward_real(vtl_dtype dt, int64_t P, int64_t L, int64_t S, int64_t E, int64_t Ev,
                                     double scale, bool causal, const void *q, const void *k, const void *v, void *out,
                                     void *lse) {
  if (attn_check_dtype(dt)) return vtl_error_status();
  if (P == 0 || L == 0) return VTL_OK;
  size_t es = vtl_dtype_size(dt);
  if (S == 0) { /* softmax over no keys: NaN rows, as the composed form gives */
    for (int64_t i = 0; i < P * L * Ev; i++) vtl_store_from_double((char *)out + i * es, dt, NAN);
    for (int64_t i = 0; lse && i < P * L; i++) vtl_store_from_double((char *)lse + i * es, dt, -INFINITY);
    return VTL_OK;
  }
  attn_t a = {dt, L, S, E, Ev, scale, causal, E, E, Ev, Ev};
  int nt;
  size_t sb;
  char *buf = attn_buffers(&a, P, 1, &nt, &sb);
  if (!buf) return vtl_error_status();
  VTL_FOR_THREADS(nt, i, P, {
    attn_pair_forward(&a, (const char *)q + i * L * E * es, (const char *)k + i * S * E * es,
                      (const char *)v + i * S * Ev * es, (char *)out + i * L * Ev * es,
                      lse ? (char *)lse + i * L * es : NULL, buf + (size_t)omp_get_thread_num() * sb);
  });
  free(buf);
  return VTL_OK;
}

static vtl_status attn_backward_real(vtl_dtype dt, int64_t P, int64_t L, int64_t S, int64_t E, int64_t Ev,
                                      double scale, bool causal, const void *g, const void *q, const void *k,
                                      const void *v, const void *out, const void *lse, void *dq, void *dk, void *dv) {
  if (attn_check_dtype(dt)) return vtl_error_status();
  size_t es = vtl_dtype_size(dt);
  if (P == 0) return VTL_OK;
  if (L == 0 || S == 0) { /* no products: the gradients are zero */
    memset(dq, 0, (size_t)(P * L * E) * es);
    memset(dk, 0, (size_t)(P * S * E) * es);
    memset(dv, 0, (size_t)(P * S * Ev) * es);
    return VTL_OK;
  }
  attn_t a = {dt, L, S, E, Ev, scale, causal, E, E, Ev, Ev};
  int nt;
  size_t sb;
  char *buf = attn_buffers(&a, P, 2, &nt, &sb);
  if (!buf) return vtl_error_status();
  VTL_FOR_THREADS(nt, i, P, {
    char *p = buf + (size_t)omp_get_thread_num() * 2 * sb;
    attn_pair_backward(&a, (const char *)g + i * L * Ev * es, (const char *)q + i * L * E * es,
                       (const char *)k + i * S * E * es, (const char *)v + i * S * Ev * es,
                       (const char *)out + i * L * Ev * es, (const char *)lse + i * L * es,
                       (char *)dq + i * L * E * es, (char *)dk + i * S * E * es, (char *)dv + i * S * Ev * es, p,
                       p + sb);
  });
  free(buf);
  return VTL_OK;
}


/* ---- f16/bf16 attention ----
   bf16: oneDNN batched bf16 products over chunks of pairs (operands read in place, f32
   accumulation), the scores, their softmax and gradients in f32, the probabilities and score
   gradients rounded to bf16 for the products (as the GPU kernels do). f16, or bf16 without
   oneDNN bf16 kernels: the f32 kernels on converted copies, each result rounded once. */

static inline float bf16f(uint16_t h) {
  uint32_t x = (uint32_t)h << 16;
  float f;
  memcpy(&f, &x, 4);
  return f;
}

/* the pairs of a chunk: its f32 scores within 64 MiB */
static int64_t attn_chunk(int64_t P, int64_t L, int64_t S) {
  int64_t per = L * S * 4, n = per ? ((int64_t)64 << 20) / per : P;
  return n < 1 ? 1 : n > P ? P : n;
}

/* per score row r (query r % L): s = scale s, masked after the query when causal, softmax;
   lse[r] and the probabilities in bf16 */
static void attn_rows_softmax_bf16(float *s, uint16_t *p, float *lse, int64_t rows, int64_t L, int64_t S, float scale,
                                   bool causal) {
#pragma omp parallel for if (rows * S > 65536)
  for (int64_t r = 0; r < rows; r++) {
    float *sr = s + r * S;
    int64_t n = causal && r % L + 1 < S ? r % L + 1 : S;
    for (int64_t j = 0; j < n; j++) sr[j] *= scale;
    for (int64_t j = n; j < S; j++) sr[j] = -INFINITY;
    vtl_cpu_softmax_rows(VTL_F32, sr, sr, 1, S, lse + r, NULL);
    vtl_cpu_cast(p + r * S, VTL_BF16, 2, sr, VTL_F32, 4, S);
  }
}

/* s = exp(scale s - lse) (0 where masked) in place, and in bf16 into p */
static void attn_rows_probs_bf16(float *s, uint16_t *p, const float *lse, int64_t rows, int64_t L, int64_t S,
                                 float scale, bool causal) {
#pragma omp parallel for if (rows * S > 65536)
  for (int64_t r = 0; r < rows; r++) {
    float *sr = s + r * S, l = lse[r];
    int64_t n = causal && r % L + 1 < S ? r % L + 1 : S;
#pragma omp simd
    for (int64_t j = 0; j < n; j++) sr[j] = vtl_cpu_expf(sr[j] * scale - l);
    for (int64_t j = n; j < S; j++) sr[j] = 0;
    vtl_cpu_cast(p + r * S, VTL_BF16, 2, sr, VTL_F32, 4, S);
  }
}

/* ds = scale p (dp - Σ g out) per row, in bf16 (written over dp's bf16 twin ds) */
static void attn_rows_dscores_bf16(const float *p, float *dp, const uint16_t *g, const uint16_t *out, uint16_t *ds,
                                   int64_t rows, int64_t S, int64_t Ev, float scale) {
#pragma omp parallel for if (rows * S > 65536)
  for (int64_t r = 0; r < rows; r++) {
    double d = 0;
    for (int64_t e = 0; e < Ev; e++) d += (double)bf16f(g[r * Ev + e]) * bf16f(out[r * Ev + e]);
    float dd = (float)d, *dr = dp + r * S;
    const float *pr = p + r * S;
#pragma omp simd
    for (int64_t j = 0; j < S; j++) dr[j] = scale * pr[j] * (dr[j] - dd);
    vtl_cpu_cast(ds + r * S, VTL_BF16, 2, dr, VTL_F32, 4, S);
  }
}

/* 1 done, 0 no oneDNN bf16 products here (nothing written that the f32 path does not redo),
   -1 error set */
static int attn_forward_bf16(int64_t P, int64_t L, int64_t S, int64_t E, int64_t Ev, double scale, bool causal,
                             const uint16_t *q, const uint16_t *k, const uint16_t *v, uint16_t *out, float *lse) {
  int64_t n = attn_chunk(P, L, S);
  char *buf = malloc((size_t)(n * L * S) * 6);
  if (!buf) return vtl_error_set(VTL_ERR_OOM, "attention: out of memory for %lld x %lld scores", (long long)L, (long long)S), -1;
  float *s32 = (float *)buf;
  uint16_t *p16 = (uint16_t *)(s32 + n * L * S);
  int ok = 1;
  for (int64_t p0 = 0; p0 < P && ok; p0 += n) {
    int64_t cnt = P - p0 < n ? P - p0 : n;
    int64_t sq[3] = {L * E, E, 1}, skt[3] = {S * E, 1, E}, sp[3] = {L * S, S, 1}, sv[3] = {S * Ev, Ev, 1};
    ok = vtl_cpu_gemm_bf16(cnt, L, S, E, q + p0 * L * E, sq, k + p0 * S * E, skt, s32, VTL_F32);
    if (!ok) break;
    attn_rows_softmax_bf16(s32, p16, lse + p0 * L, cnt * L, L, S, (float)scale, causal);
    ok = vtl_cpu_gemm_bf16(cnt, L, Ev, S, p16, sp, v + p0 * S * Ev, sv, out + p0 * L * Ev, VTL_BF16);
  }
  free(buf);
  return ok;
}

static int attn_backward_bf16(int64_t P, int64_t L, int64_t S, int64_t E, int64_t Ev, double scale, bool causal,
                              const uint16_t *g, const uint16_t *q, const uint16_t *k, const uint16_t *v,
                              const uint16_t *out, const float *lse, uint16_t *dq, uint16_t *dk, uint16_t *dv) {
  int64_t n = attn_chunk(P, L, S);
  char *buf = malloc((size_t)(n * L * S) * 10);
  if (!buf) return vtl_error_set(VTL_ERR_OOM, "attention_backward: out of memory for %lld x %lld scores", (long long)L, (long long)S), -1;
  float *s32 = (float *)buf, *dp32 = s32 + n * L * S;
  uint16_t *p16 = (uint16_t *)(dp32 + n * L * S); /* P, then dS */
  int ok = 1;
  for (int64_t p0 = 0; p0 < P && ok; p0 += n) {
    int64_t cnt = P - p0 < n ? P - p0 : n;
    const uint16_t *gp = g + p0 * L * Ev, *qp = q + p0 * L * E, *kp = k + p0 * S * E, *vp = v + p0 * S * Ev;
    int64_t sq[3] = {L * E, E, 1}, skt[3] = {S * E, 1, E}, sk[3] = {S * E, E, 1}, spt[3] = {L * S, 1, S};
    int64_t sp[3] = {L * S, S, 1}, sg[3] = {L * Ev, Ev, 1}, svt[3] = {S * Ev, 1, Ev};
    ok = vtl_cpu_gemm_bf16(cnt, L, S, E, qp, sq, kp, skt, s32, VTL_F32);
    if (!ok) break;
    attn_rows_probs_bf16(s32, p16, lse + p0 * L, cnt * L, L, S, (float)scale, causal);
    ok = vtl_cpu_gemm_bf16(cnt, S, Ev, L, p16, spt, gp, sg, dv + p0 * S * Ev, VTL_BF16) && /* Pᵀ g */
         vtl_cpu_gemm_bf16(cnt, L, S, Ev, gp, sg, vp, svt, dp32, VTL_F32);                /* g vᵀ */
    if (!ok) break;
    attn_rows_dscores_bf16(s32, dp32, gp, out + p0 * L * Ev, p16, cnt * L, S, Ev, (float)scale);
    ok = vtl_cpu_gemm_bf16(cnt, L, E, S, p16, sp, kp, sk, dq + p0 * L * E, VTL_BF16) && /* dS k */
         vtl_cpu_gemm_bf16(cnt, S, E, L, p16, spt, qp, sq, dk + p0 * S * E, VTL_BF16); /* dSᵀ q */
  }
  free(buf);
  return ok;
}

/* f32 copies of n elements of half data (into dst) and back */
static void to_f32(float *dst, const void *src, vtl_dtype dt, int64_t n) { vtl_cpu_cast(dst, VTL_F32, 4, src, dt, 2, n); }
static void from_f32(void *dst, vtl_dtype dt, const float *src, int64_t n) { vtl_cpu_cast(dst, dt, 2, src, VTL_F32, 4, n); }

vtl_status vtl_cpu_attention_forward(vtl_dtype dt, int64_t P, int64_t L, int64_t S, int64_t E, int64_t Ev,
                                     double scale, bool causal, const void *q, const void *k, const void *v, void *out,
                                     void *lse) {
  if (dt != VTL_F16 && dt != VTL_BF16) return attn_forward_real(dt, P, L, S, E, Ev, scale, causal, q, k, v, out, lse);
  if (P == 0 || L == 0) return VTL_OK;
  if (dt == VTL_BF16 && S > 0 && E > 0) {
    int r = attn_forward_bf16(P, L, S, E, Ev, scale, causal, q, k, v, out, lse);
    if (r) return r > 0 ? VTL_OK : vtl_error_status();
  }
  int64_t nq = P * L * E, nk = P * S * E, nv = P * S * Ev, no = P * L * Ev;
  float *f = malloc((size_t)(nq + nk + nv + no + 1) * 4);
  if (!f) return vtl_error_set(VTL_ERR_OOM, "attention: out of memory for f32 copies");
  to_f32(f, q, dt, nq);
  to_f32(f + nq, k, dt, nk);
  to_f32(f + nq + nk, v, dt, nv);
  vtl_status st = attn_forward_real(VTL_F32, P, L, S, E, Ev, scale, causal, f, f + nq, f + nq + nk, f + nq + nk + nv, lse);
  if (st == VTL_OK) from_f32(out, dt, f + nq + nk + nv, no);
  free(f);
  return st;
}

vtl_status vtl_cpu_attention_backward(vtl_dtype dt, int64_t P, int64_t L, int64_t S, int64_t E, int64_t Ev,
                                      double scale, bool causal, const void *g, const void *q, const void *k,
                                      const void *v, const void *out, const void *lse, void *dq, void *dk, void *dv) {
  if (dt != VTL_F16 && dt != VTL_BF16)
    return attn_backward_real(dt, P, L, S, E, Ev, scale, causal, g, q, k, v, out, lse, dq, dk, dv);
  if (dt == VTL_BF16 && P > 0 && L > 0 && S > 0 && E > 0 && Ev > 0) {
    int r = attn_backward_bf16(P, L, S, E, Ev, scale, causal, g, q, k, v, out, lse, dq, dk, dv);
    if (r) return r > 0 ? VTL_OK : vtl_error_status();
  }
  int64_t nq = P * L * E, nk = P * S * E, nv = P * S * Ev, no = P * L * Ev;
  float *f = malloc((size_t)(2 * no + 2 * nq + 2 * nk + 2 * nv + 1) * 4);
  if (!f) return vtl_error_set(VTL_ERR_OOM, "attention_backward: out of memory for f32 copies");
  float *fg = f, *fq = fg + no, *fk = fq + nq, *fv = fk + nk, *fo = fv + nv, *gq = fo + no, *gk = gq + nq, *gv = gk + nk;
  to_f32(fg, g, dt, no);
  to_f32(fq, q, dt, nq);
  to_f32(fk, k, dt, nk);
  to_f32(fv, v, dt, nv);
  to_f32(fo, out, dt, no);
  vtl_status st = attn_backward_real(VTL_F32, P, L, S, E, Ev, scale, causal, fg, fq, fk, fv, fo, lse, gq, gk, gv);
  if (st == VTL_OK) {
    from_f32(dq, dt, gq, nq);
    from_f32(dk, dt, gk, nk);
    from_f32(dv, dt, gv, nv);
  }
  free(f);
  return st;
}

/* Multi-head self-attention of an inference layer, from the packed projection: qkv (B,N,3,H,D)
   contiguous (q, k, v for each token and head), out (B,N,H,D) = softmax(scale q kᵀ) v per
   (sample, head), each pair reading its q, k, v in place through the packed row stride. */
vtl_status vtl_cpu_attention_qkv(vtl_dtype dt, int64_t B, int64_t N, int64_t H, int64_t D, double scale,
                                 const void *qkv, void *out) {
  if (attn_check_dtype(dt)) return vtl_error_status();
  int64_t pairs = B * H, ld = 3 * H * D;
  if (pairs == 0 || N == 0) return VTL_OK;
  size_t es = vtl_dtype_size(dt);
  attn_t a = {dt, N, N, D, D, scale, false, ld, ld, ld, H * D};
  int nt;
  size_t sb;
  char *buf = attn_buffers(&a, pairs, 1, &nt, &sb);
  if (!buf) return vtl_error_status();
  VTL_FOR_THREADS(nt, p, pairs, {
    int64_t b = p / H, h = p % H;
    const char *q = (const char *)qkv + (b * N * ld + h * D) * (int64_t)es;
    attn_pair_forward(&a, q, q + H * D * es, q + 2 * H * D * es, (char *)out + (b * N * H * D + h * D) * (int64_t)es,
                      NULL, buf + (size_t)omp_get_thread_num() * sb);
  });
  free(buf);
  return VTL_OK;
}
