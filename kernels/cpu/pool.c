/*
 * CPU 2-D pooling: max, average, adaptive average, adaptive max, forward and backward.
 *
 * Every kernel works on independent (H,W) planes: x (P,H,W), y (P,OH,OW), contiguous, where
 * P = N*C; planes are split over the OpenMP pool, and each plane's loop reads and writes one
 * cache-resident block. Max-pooling indices are 0-based flat positions in the input plane.
 * Windows follow PyTorch exactly (start = o*stride - pad, clipped to the plane; NaN wins a
 * max; average divisors per count_include_pad / divisor_override).
 */
#include <math.h>
#include <stdbool.h>
#include <string.h>
#include <omp.h>
#include "nn_conv.h"

/* widest output row the row-at-a-time max pooling handles (its index buffer is on the stack) */
#define ROW_MAX 2048

/* elements of work below which a loop stays serial */
#define POOL_GRAIN 16384

static int plane_threads(int64_t P, int64_t work) {
  if (P < 2 || work < POOL_GRAIN || omp_in_parallel()) return 1;
  int nt = omp_get_max_threads();
  return P < nt ? (int)P : nt;
}

/* ---- max pooling ---- */

/* The range [lo, hi) of outputs o < nout whose tap at offset koff reads inside [0, nin):
   0 <= o*st - pad + koff < nin. */
static void tap_range(int64_t nin, int64_t nout, int64_t st, int64_t pad, int64_t koff, int64_t *lo, int64_t *hi) {
  int64_t a = pad - koff, b = nin + pad - koff;
  int64_t l = a <= 0 ? 0 : (a + st - 1) / st, h = b <= 0 ? 0 : (b + st - 1) / st;
  if (h > nout) h = nout;
  *lo = l < h ? l : h;
  *hi = h;
}

/* One output row at a time, taps outermost: for each window row and column offset, one
   branch-free pass over the row's outputs (vectorizable). Each output still sees its taps in
   row-major order, so ties go to the first maximum and a NaN wins, as in PyTorch. */
#define MAX_POOL_FWD(T)                                                                                   \
  do {                                                                                                    \
    const T *X = x;                                                                                       \
    T *Y = y;                                                                                             \
    _Pragma("omp parallel for num_threads(nt) schedule(static) if (nt > 1)")                              \
    for (int64_t p = 0; p < s->P; p++) {                                                                  \
      const T *xp = X + p * s->H * s->W;                                                                  \
      int32_t ib[ROW_MAX];                                                                                \
      for (int64_t oh = 0; oh < s->OH; oh++) {                                                            \
        T *yr = Y + (p * s->OH + oh) * s->OW;                                                             \
        int64_t *ir = idx ? idx + (p * s->OH + oh) * s->OW : NULL;                                        \
        int64_t h0 = oh * sh - ph, h1 = h0 + (kh - 1) * dh + 1;                                           \
        if (h1 > s->H) h1 = s->H;                                                                         \
        while (h0 < 0) h0 += dh;                                                                          \
        for (int64_t ow = 0; ow < s->OW; ow++) yr[ow] = -INFINITY;                                        \
        if (ir)                                                                                           \
          for (int64_t ow = 0; ow < s->OW; ow++) {                                                        \
            int64_t w0 = ow * sw - pw;                                                                    \
            while (w0 < 0) w0 += dw;                                                                      \
            ib[ow] = (int32_t)(h0 * s->W + w0);                                                           \
          }                                                                                               \
        for (int64_t h = h0; h < h1; h += dh) {                                                           \
          const T *xr = xp + h * s->W;                                                                    \
          for (int64_t j = 0; j < kw; j++) {                                                              \
            int64_t lo, hi, off = j * dw - pw;                                                            \
            tap_range(s->W, s->OW, sw, pw, j * dw, &lo, &hi);                                             \
            if (ir) {                                                                                     \
              int32_t base = (int32_t)(h * s->W + off);                                                   \
              for (int64_t ow = lo; ow < hi; ow++) {                                                      \
                T v = xr[ow * sw + off], m = yr[ow];                                                      \
                bool take = v > m || v != v;                                                              \
                yr[ow] = take ? v : m;                                                                    \
                ib[ow] = take ? base + (int32_t)(ow * sw) : ib[ow];                                       \
              }                                                                                           \
            } else {                                                                                      \
              for (int64_t ow = lo; ow < hi; ow++) {                                                      \
                T v = xr[ow * sw + off], m = yr[ow];                                                      \
                yr[ow] = v > m || v != v ? v : m;                                                         \
              }                                                                                           \
            }                                                                                             \
          }                                                                                               \
        }                                                                                                 \
        if (ir)                                                                                           \
          for (int64_t ow = 0; ow < s->OW; ow++) ir[ow] = ib[ow];                                         \
      }                                                                                                   \
    }                                                                                                     \
  } while (0)

/* the general loop, one output at a time (rows wider than ROW_MAX, planes of 2^31 elements) */
#define MAX_POOL_FWD_GENERIC(T)                                                                           \
  do {                                                                                                    \
    const T *X = x;                                                                                       \
    T *Y = y;                                                                                             \
    _Pragma("omp parallel for num_threads(nt) schedule(static) if (nt > 1)")                              \
    for (int64_t p = 0; p < s->P; p++) {                                                                  \
      const T *xp = X + p * s->H * s->W;                                                                  \
      T *yp = Y + p * s->OH * s->OW;                                                                      \
      int64_t *ip = idx ? idx + p * s->OH * s->OW : NULL;                                                 \
      for (int64_t oh = 0; oh < s->OH; oh++) {                                                            \
        int64_t h0 = oh * sh - ph, h1 = h0 + (kh - 1) * dh + 1;                                           \
        if (h1 > s->H) h1 = s->H;                                                                         \
        while (h0 < 0) h0 += dh;                                                                          \
        for (int64_t ow = 0; ow < s->OW; ow++) {                                                          \
          int64_t w0 = ow * sw - pw, w1 = w0 + (kw - 1) * dw + 1;                                         \
          if (w1 > s->W) w1 = s->W;                                                                       \
          while (w0 < 0) w0 += dw;                                                                        \
          T m = -INFINITY;                                                                                \
          int64_t mi = h0 * s->W + w0;                                                                    \
          for (int64_t h = h0; h < h1; h += dh)                                                           \
            for (int64_t w = w0; w < w1; w += dw) {                                                       \
              T v = xp[h * s->W + w];                                                                     \
              if (v > m || v != v) { m = v; mi = h * s->W + w; }                                          \
            }                                                                                             \
          yp[oh * s->OW + ow] = m;                                                                        \
          if (ip) ip[oh * s->OW + ow] = mi;                                                               \
        }                                                                                                 \
      }                                                                                                   \
    }                                                                                                     \
  } while (0)

void vtl_cpu_max_pool2d_forward(const vtl_pool2d_shape *s, const void *x, void *y, int64_t *idx) {
  int64_t kh = s->kernel[0], kw = s->kernel[1], sh = s->stride[0], sw = s->stride[1];
  int64_t ph = s->pad[0], pw = s->pad[1], dh = s->dilation[0], dw = s->dilation[1];
  int nt = plane_threads(s->P, s->P * s->OH * s->OW * kh * kw);
  bool rows = s->OW <= ROW_MAX && s->H * s->W <= INT32_MAX;
  if (s->dtype == VTL_F32) {
    if (rows) MAX_POOL_FWD(float);
    else MAX_POOL_FWD_GENERIC(float);
  } else {
    if (rows) MAX_POOL_FWD(double);
    else MAX_POOL_FWD_GENERIC(double);
  }
}

#define MAX_POOL_BWD(T)                                                                                   \
  do {                                                                                                    \
    const T *GY = gy;                                                                                     \
    T *GX = gx;                                                                                           \
    _Pragma("omp parallel for num_threads(nt) schedule(static) if (nt > 1)")                              \
    for (int64_t p = 0; p < s->P; p++) {                                                                  \
      T *gp = GX + p * s->H * s->W;                                                                       \
      const T *g = GY + p * s->OH * s->OW;                                                                \
      const int64_t *ip = idx + p * s->OH * s->OW;                                                        \
      memset(gp, 0, (size_t)(s->H * s->W) * sizeof(T));                                                  \
      for (int64_t o = 0; o < s->OH * s->OW; o++) gp[ip[o]] += g[o];                                      \
    }                                                                                                     \
  } while (0)

void vtl_cpu_max_pool2d_backward(const vtl_pool2d_shape *s, const void *gy, const int64_t *idx, void *gx) {
  int nt = plane_threads(s->P, s->P * (s->H * s->W + s->OH * s->OW));
  if (s->dtype == VTL_F32) MAX_POOL_BWD(float);
  else MAX_POOL_BWD(double);
}

/* ---- average pooling ---- */

/* window of output (oh, ow) clipped to the plane, and its divisor */
typedef struct { int64_t h0, h1, w0, w1; double div; } avg_window;

static avg_window avg_win(const vtl_pool2d_shape *s, int64_t oh, int64_t ow) {
  avg_window a;
  int64_t h0 = oh * s->stride[0] - s->pad[0], w0 = ow * s->stride[1] - s->pad[1];
  int64_t h1 = h0 + s->kernel[0], w1 = w0 + s->kernel[1];
  if (h1 > s->H + s->pad[0]) h1 = s->H + s->pad[0];
  if (w1 > s->W + s->pad[1]) w1 = s->W + s->pad[1];
  int64_t padded = (h1 - h0) * (w1 - w0);
  if (h0 < 0) h0 = 0;
  if (w0 < 0) w0 = 0;
  if (h1 > s->H) h1 = s->H;
  if (w1 > s->W) w1 = s->W;
  a.h0 = h0; a.h1 = h1; a.w0 = w0; a.w1 = w1;
  if (s->divisor_override) a.div = (double)s->divisor_override;
  else if (s->count_include_pad) a.div = (double)padded;
  else a.div = (double)((h1 - h0) * (w1 - w0));
  return a;
}

/* taps outermost per output row, as for max pooling; the sum of each window is then divided */
#define AVG_POOL_FWD(T)                                                                                   \
  do {                                                                                                    \
    const T *X = x;                                                                                       \
    T *Y = y;                                                                                             \
    _Pragma("omp parallel for num_threads(nt) schedule(static) if (nt > 1)")                              \
    for (int64_t p = 0; p < s->P; p++) {                                                                  \
      const T *xp = X + p * s->H * s->W;                                                                  \
      for (int64_t oh = 0; oh < s->OH; oh++) {                                                            \
        T *yr = Y + (p * s->OH + oh) * s->OW;                                                             \
        avg_window a = avg_win(s, oh, 0);                                                                 \
        for (int64_t ow = 0; ow < s->OW; ow++) yr[ow] = 0;                                                \
        for (int64_t h = a.h0; h < a.h1; h++) {                                                           \
          const T *xr = xp + h * s->W;                                                                    \
          for (int64_t j = 0; j < s->kernel[1]; j++) {                                                    \
            int64_t lo, hi, off = j - s->pad[1];                                                          \
            tap_range(s->W, s->OW, s->stride[1], s->pad[1], j, &lo, &hi);                                 \
            for (int64_t ow = lo; ow < hi; ow++) yr[ow] += xr[ow * s->stride[1] + off];                   \
          }                                                                                               \
        }                                                                                                 \
        for (int64_t ow = 0; ow < s->OW; ow++) {                                                          \
          a = avg_win(s, oh, ow);                                                                         \
          yr[ow] = a.h0 < a.h1 && a.w0 < a.w1 ? (T)(yr[ow] / a.div) : 0;                                  \
        }                                                                                                 \
      }                                                                                                   \
    }                                                                                                     \
  } while (0)

void vtl_cpu_avg_pool2d_forward(const vtl_pool2d_shape *s, const void *x, void *y) {
  int nt = plane_threads(s->P, s->P * s->OH * s->OW * s->kernel[0] * s->kernel[1]);
  if (s->dtype == VTL_F32) AVG_POOL_FWD(float);
  else AVG_POOL_FWD(double);
}

#define AVG_POOL_BWD(T)                                                                                   \
  do {                                                                                                    \
    const T *GY = gy;                                                                                     \
    T *GX = gx;                                                                                           \
    _Pragma("omp parallel for num_threads(nt) schedule(static) if (nt > 1)")                              \
    for (int64_t p = 0; p < s->P; p++) {                                                                  \
      T *gp = GX + p * s->H * s->W;                                                                       \
      const T *g = GY + p * s->OH * s->OW;                                                                \
      memset(gp, 0, (size_t)(s->H * s->W) * sizeof(T));                                                  \
      for (int64_t oh = 0; oh < s->OH; oh++)                                                              \
        for (int64_t ow = 0; ow < s->OW; ow++) {                                                          \
          avg_window a = avg_win(s, oh, ow);                                                              \
          if (a.h0 >= a.h1 || a.w0 >= a.w1) continue;                                                     \
          T v = (T)(g[oh * s->OW + ow] / a.div);                                                          \
          for (int64_t h = a.h0; h < a.h1; h++)                                                           \
            for (int64_t w = a.w0; w < a.w1; w++) gp[h * s->W + w] += v;                                  \
        }                                                                                                 \
    }                                                                                                     \
  } while (0)

void vtl_cpu_avg_pool2d_backward(const vtl_pool2d_shape *s, const void *gy, void *gx) {
  int nt = plane_threads(s->P, s->P * s->OH * s->OW * s->kernel[0] * s->kernel[1]);
  if (s->dtype == VTL_F32) AVG_POOL_BWD(float);
  else AVG_POOL_BWD(double);
}

/* ---- adaptive pooling: window i of n over a length-L dim is [floor(i*L/n), ceil((i+1)*L/n)) ---- */

static inline int64_t ad_start(int64_t i, int64_t n, int64_t L) { return i * L / n; }
static inline int64_t ad_end(int64_t i, int64_t n, int64_t L) { return ((i + 1) * L + n - 1) / n; }

#define ADAPTIVE_AVG_FWD(T)                                                                               \
  do {                                                                                                    \
    const T *X = x;                                                                                       \
    T *Y = y;                                                                                             \
    if (s->OH == 1 && s->OW == 1) { /* global average pooling */                                          \
      int64_t n = s->H * s->W;                                                                            \
      _Pragma("omp parallel for num_threads(nt) schedule(static) if (nt > 1)")                            \
      for (int64_t p = 0; p < s->P; p++) {                                                                \
        const T *xp = X + p * n;                                                                          \
        T sum = 0;                                                                                        \
        _Pragma("omp simd reduction(+ : sum)")                                                            \
        for (int64_t i = 0; i < n; i++) sum += xp[i];                                                     \
        Y[p] = (T)(sum / (T)n);                                                                           \
      }                                                                                                   \
      break;                                                                                              \
    }                                                                                                     \
    _Pragma("omp parallel for num_threads(nt) schedule(static) if (nt > 1)")                              \
    for (int64_t p = 0; p < s->P; p++) {                                                                  \
      const T *xp = X + p * s->H * s->W;                                                                  \
      T *yp = Y + p * s->OH * s->OW;                                                                      \
      for (int64_t oh = 0; oh < s->OH; oh++) {                                                            \
        int64_t h0 = ad_start(oh, s->OH, s->H), h1 = ad_end(oh, s->OH, s->H);                             \
        for (int64_t ow = 0; ow < s->OW; ow++) {                                                          \
          int64_t w0 = ad_start(ow, s->OW, s->W), w1 = ad_end(ow, s->OW, s->W);                           \
          T sum = 0;                                                                                      \
          for (int64_t h = h0; h < h1; h++)                                                               \
            for (int64_t w = w0; w < w1; w++) sum += xp[h * s->W + w];                                    \
          yp[oh * s->OW + ow] = (T)(sum / (T)((h1 - h0) * (w1 - w0)));                                    \
        }                                                                                                 \
      }                                                                                                   \
    }                                                                                                     \
  } while (0)

void vtl_cpu_adaptive_avg_pool2d_forward(const vtl_pool2d_shape *s, const void *x, void *y) {
  int nt = plane_threads(s->P, s->P * s->H * s->W);
  if (s->dtype == VTL_F32) ADAPTIVE_AVG_FWD(float);
  else ADAPTIVE_AVG_FWD(double);
}

#define ADAPTIVE_AVG_BWD(T)                                                                               \
  do {                                                                                                    \
    const T *GY = gy;                                                                                     \
    T *GX = gx;                                                                                           \
    _Pragma("omp parallel for num_threads(nt) schedule(static) if (nt > 1)")                              \
    for (int64_t p = 0; p < s->P; p++) {                                                                  \
      T *gp = GX + p * s->H * s->W;                                                                       \
      const T *g = GY + p * s->OH * s->OW;                                                                \
      if (s->OH == 1 && s->OW == 1) {                                                                     \
        T v = g[0] / (T)(s->H * s->W);                                                                    \
        for (int64_t i = 0; i < s->H * s->W; i++) gp[i] = v;                                              \
        continue;                                                                                         \
      }                                                                                                   \
      memset(gp, 0, (size_t)(s->H * s->W) * sizeof(T));                                                   \
      for (int64_t oh = 0; oh < s->OH; oh++) {                                                            \
        int64_t h0 = ad_start(oh, s->OH, s->H), h1 = ad_end(oh, s->OH, s->H);                             \
        for (int64_t ow = 0; ow < s->OW; ow++) {                                                          \
          int64_t w0 = ad_start(ow, s->OW, s->W), w1 = ad_end(ow, s->OW, s->W);                           \
          T v = g[oh * s->OW + ow] / (T)((h1 - h0) * (w1 - w0));                                          \
          for (int64_t h = h0; h < h1; h++)                                                               \
            for (int64_t w = w0; w < w1; w++) gp[h * s->W + w] += v;                                      \
        }                                                                                                 \
      }                                                                                                   \
    }                                                                                                     \
  } while (0)

void vtl_cpu_adaptive_avg_pool2d_backward(const vtl_pool2d_shape *s, const void *gy, void *gx) {
  int nt = plane_threads(s->P, s->P * s->H * s->W);
  if (s->dtype == VTL_F32) ADAPTIVE_AVG_BWD(float);
  else ADAPTIVE_AVG_BWD(double);
}

#define ADAPTIVE_MAX_FWD(T)                                                                               \
  do {                                                                                                    \
    const T *X = x;                                                                                       \
    T *Y = y;                                                                                             \
    _Pragma("omp parallel for num_threads(nt) schedule(static) if (nt > 1)")                              \
    for (int64_t p = 0; p < s->P; p++) {                                                                  \
      const T *xp = X + p * s->H * s->W;                                                                  \
      T *yp = Y + p * s->OH * s->OW;                                                                      \
      int64_t *ip = idx ? idx + p * s->OH * s->OW : NULL;                                                 \
      for (int64_t oh = 0; oh < s->OH; oh++) {                                                            \
        int64_t h0 = ad_start(oh, s->OH, s->H), h1 = ad_end(oh, s->OH, s->H);                             \
        for (int64_t ow = 0; ow < s->OW; ow++) {                                                          \
          int64_t w0 = ad_start(ow, s->OW, s->W), w1 = ad_end(ow, s->OW, s->W);                           \
          T m = -INFINITY;                                                                                \
          int64_t mi = h0 * s->W + w0;                                                                    \
          for (int64_t h = h0; h < h1; h++)                                                               \
            for (int64_t w = w0; w < w1; w++) {                                                           \
              T v = xp[h * s->W + w];                                                                     \
              if (v > m || isnan(v)) { m = v; mi = h * s->W + w; }                                        \
            }                                                                                             \
          yp[oh * s->OW + ow] = m;                                                                        \
          if (ip) ip[oh * s->OW + ow] = mi;                                                               \
        }                                                                                                 \
      }                                                                                                   \
    }                                                                                                     \
  } while (0)

void vtl_cpu_adaptive_max_pool2d_forward(const vtl_pool2d_shape *s, const void *x, void *y, int64_t *idx) {
  int nt = plane_threads(s->P, s->P * s->H * s->W);
  if (s->dtype == VTL_F32) ADAPTIVE_MAX_FWD(float);
  else ADAPTIVE_MAX_FWD(double);
}

/* ---- channels-last (N,H,W,C) inference pooling ---- */

/* One output pixel at a time, its window's pixels in row-major order, each a contiguous run of
   C channels (vectorizable); s->P is N. The window rules are the planar kernels' (adaptive:
   [floor(o*in/out), ceil((o+1)*in/out))). */
#define MAX_POOL_CL(T)                                                                                    \
  do {                                                                                                    \
    const T *X = x;                                                                                       \
    T *Y = y;                                                                                             \
    _Pragma("omp parallel for num_threads(nt) schedule(static) if (nt > 1)")                              \
    for (int64_t r = 0; r < s->P * s->OH; r++) {                                                          \
      int64_t n = r / s->OH, oh = r % s->OH;                                                              \
      int64_t h0 = oh * s->stride[0] - s->pad[0];                                                         \
      for (int64_t ow = 0; ow < s->OW; ow++) {                                                            \
        T *o = Y + ((n * s->OH + oh) * s->OW + ow) * C;                                                   \
        int64_t *io = idx ? idx + ((n * s->OH + oh) * s->OW + ow) * C : NULL;                             \
        for (int64_t c = 0; c < C; c++) o[c] = -INFINITY;                                                 \
        if (io)                                                                                           \
          for (int64_t c = 0; c < C; c++) io[c] = -1;                                                     \
        int64_t w0 = ow * s->stride[1] - s->pad[1];                                                       \
        for (int64_t i = 0; i < s->kernel[0]; i++) {                                                      \
          int64_t h = h0 + i * s->dilation[0];                                                            \
          if (h < 0 || h >= s->H) continue;                                                               \
          for (int64_t j = 0; j < s->kernel[1]; j++) {                                                    \
            int64_t w = w0 + j * s->dilation[1];                                                          \
            if (w < 0 || w >= s->W) continue;                                                             \
            const T *in = X + ((n * s->H + h) * s->W + w) * C;                                            \
            if (io) {                                                                                     \
              int64_t pos = h * s->W + w;                                                                 \
              for (int64_t c = 0; c < C; c++) {                                                           \
                T v = in[c];                                                                              \
                bool take = v > o[c] || isnan(v) || io[c] < 0;                                            \
                o[c] = take ? v : o[c];                                                                   \
                io[c] = take ? pos : io[c];                                                               \
              }                                                                                           \
            } else {                                                                                      \
              for (int64_t c = 0; c < C; c++) {                                                           \
                T v = in[c];                                                                              \
                o[c] = (v > o[c] || isnan(v)) ? v : o[c];                                                 \
              }                                                                                           \
            }                                                                                             \
          }                                                                                               \
        }                                                                                                 \
      }                                                                                                   \
    }                                                                                                     \
  } while (0)

void vtl_cpu_max_pool2d_forward_cl(const vtl_pool2d_shape *s, int64_t C, const void *x, void *y, int64_t *idx) {
  int nt = plane_threads(s->P * s->OH, s->P * s->OH * s->OW * C * s->kernel[0] * s->kernel[1]);
  if (s->dtype == VTL_F32) MAX_POOL_CL(float);
  else MAX_POOL_CL(double);
}

/* gx (N,H,W,C) = gy (N,OH,OW,C) summed at the plane positions idx (same layout as gy); samples
   split over the threads */
#define MAX_POOL_BWD_CL(T)                                                                                \
  do {                                                                                                    \
    const T *GY = gy;                                                                                     \
    T *GX = gx;                                                                                           \
    _Pragma("omp parallel for num_threads(nt) schedule(static) if (nt > 1)")                              \
    for (int64_t n = 0; n < s->P; n++) {                                                                  \
      T *gp = GX + n * s->H * s->W * C;                                                                   \
      memset(gp, 0, (size_t)(s->H * s->W * C) * sizeof(T));                                              \
      const T *g = GY + n * s->OH * s->OW * C;                                                            \
      const int64_t *ip = idx + n * s->OH * s->OW * C;                                                    \
      for (int64_t o = 0; o < s->OH * s->OW; o++)                                                         \
        for (int64_t c = 0; c < C; c++) gp[ip[o * C + c] * C + c] += g[o * C + c];                        \
    }                                                                                                     \
  } while (0)

void vtl_cpu_max_pool2d_backward_cl(const vtl_pool2d_shape *s, int64_t C, const void *gy, const int64_t *idx,
                                    void *gx) {
  int nt = plane_threads(s->P, s->P * (s->H * s->W + s->OH * s->OW) * C);
  if (s->dtype == VTL_F32) MAX_POOL_BWD_CL(float);
  else MAX_POOL_BWD_CL(double);
}

#define ADAPTIVE_AVG_CL(T)                                                                                \
  do {                                                                                                    \
    const T *X = x;                                                                                       \
    T *Y = y;                                                                                             \
    _Pragma("omp parallel for num_threads(nt) schedule(static) if (nt > 1)")                              \
    for (int64_t r = 0; r < s->P * s->OH; r++) {                                                          \
      int64_t n = r / s->OH, oh = r % s->OH;                                                              \
      int64_t h0 = ad_start(oh, s->OH, s->H), h1 = ad_end(oh, s->OH, s->H);                               \
      for (int64_t ow = 0; ow < s->OW; ow++) {                                                            \
        int64_t w0 = ad_start(ow, s->OW, s->W), w1 = ad_end(ow, s->OW, s->W);                             \
        T *o = Y + ((n * s->OH + oh) * s->OW + ow) * C;                                                   \
        for (int64_t c = 0; c < C; c++) o[c] = 0;                                                         \
        for (int64_t h = h0; h < h1; h++)                                                                 \
          for (int64_t w = w0; w < w1; w++) {                                                             \
            const T *in = X + ((n * s->H + h) * s->W + w) * C;                                            \
            for (int64_t c = 0; c < C; c++) o[c] += in[c];                                                \
          }                                                                                               \
        T cnt = (T)((h1 - h0) * (w1 - w0));                                                               \
        for (int64_t c = 0; c < C; c++) o[c] /= cnt;                                                      \
      }                                                                                                   \
    }                                                                                                     \
  } while (0)

void vtl_cpu_adaptive_avg_pool2d_forward_cl(const vtl_pool2d_shape *s, int64_t C, const void *x, void *y) {
  int nt = plane_threads(s->P * s->OH, s->P * s->H * s->W * C);
  if (s->dtype == VTL_F32) ADAPTIVE_AVG_CL(float);
  else ADAPTIVE_AVG_CL(double);
}
