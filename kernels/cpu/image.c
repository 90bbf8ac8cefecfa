/*
 * Pixel kernels for the image transforms: separable resampling (nearest, bilinear, bicubic,
 * with and without antialiasing), crop with fill, flips, and the per-channel affine map behind
 * to_tensor / normalize. All work on vtl_image_view (u8 or f32 planes with element strides)
 * and split rows over the OpenMP pool.
 *
 * Resampling follows PyTorch's CPU upsample kernels (which torchvision's tensor resize calls):
 * the same source coordinates, the same filters (bilinear triangle; bicubic a = -0.75 without
 * antialias, a = -0.5 with it, as PIL), weights in float, width first then height, one
 * float intermediate, u8 results rounded half to even.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "image.h"
#include <omp.h>
#ifdef __SSE2__
#include <immintrin.h>
#endif

static inline float px_load(const vtl_image_view *v, int64_t off) {
  return v->dtype == VTL_U8 ? (float)((const uint8_t *)v->data)[off] : ((const float *)v->data)[off];
}

/* u8: round half to even (torch.round), then clamp */
static inline void px_store(const vtl_image_view *v, int64_t off, float x) {
  if (v->dtype == VTL_U8) {
    float r = nearbyintf(x);
    ((uint8_t *)v->data)[off] = (uint8_t)(r >= 0 ? (r <= 255 ? r : 255) : 0); /* NaN -> 0 */
  } else {
    ((float *)v->data)[off] = x;
  }
}

/* ---- resampling weights along one axis ---- */

/* For each output index i: k taps at idx[i*k + j] with weights w[i*k + j]. */
typedef struct {
  int k;
  int64_t *idx;
  float *w;
} axis_weights;

static float aa_bilinear(float x) {
  if (x < 0) x = -x;
  return x < 1 ? 1 - x : 0;
}

static float aa_bicubic(float x) {
  const float a = -0.5f;
  if (x < 0) x = -x;
  if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
  if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
  return 0;
}

static float cubic1(float x, float a) { return ((a + 2) * x - (a + 3)) * x * x + 1; }
static float cubic2(float x, float a) { return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a; }

static int64_t clamp64(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : v > hi ? hi : v; }

static vtl_status weights_make(axis_weights *aw, int64_t in, int64_t out, vtl_interp mode, bool antialias) {
  float scale = (float)in / (float)out;
  int k;
  float support = 0;
  bool aa = antialias && mode != VTL_INTERP_NEAREST;
  if (aa) {
    float interp = mode == VTL_INTERP_BICUBIC ? 4.0f : 2.0f;
    support = scale >= 1 ? interp * 0.5f * scale : interp * 0.5f;
    k = (int)ceilf(support) * 2 + 1;
  } else {
    k = mode == VTL_INTERP_NEAREST ? 1 : mode == VTL_INTERP_BILINEAR ? 2 : 4;
  }
  aw->k = k;
  aw->idx = malloc(sizeof *aw->idx * (size_t)(out * k));
  aw->w = malloc(sizeof *aw->w * (size_t)(out * k));
  if (!aw->idx || !aw->w) {
    free(aw->idx);
    free(aw->w);
    return vtl_error_set(VTL_ERR_OOM, "resize: out of memory for the resampling weights");
  }
  for (int64_t i = 0; i < out; i++) {
    int64_t *ix = aw->idx + i * k;
    float *w = aw->w + i * k;
    for (int j = 0; j < k; j++) { ix[j] = 0; w[j] = 0; }
    if (aa) {
      float center = scale * ((float)i + 0.5f);
      float invscale = scale >= 1 ? 1.0f / scale : 1.0f;
      int64_t xmin = (int64_t)(center - support + 0.5f);
      if (xmin < 0) xmin = 0;
      int64_t xmax = (int64_t)(center + support + 0.5f);
      if (xmax > in) xmax = in;
      int64_t xsize = xmax - xmin;
      if (xsize > k) xsize = k;
      float total = 0;
      for (int64_t j = 0; j < xsize; j++) {
        float v = mode == VTL_INTERP_BICUBIC ? aa_bicubic(((float)(j + xmin) - center + 0.5f) * invscale)
                                             : aa_bilinear(((float)(j + xmin) - center + 0.5f) * invscale);
        ix[j] = xmin + j;
        w[j] = v;
        total += v;
      }
      for (int64_t j = 0; j < xsize; j++)
        if (total != 0) w[j] /= total;
      for (int64_t j = xsize; j < k; j++) ix[j] = xmin;
    } else if (mode == VTL_INTERP_NEAREST) {
      int64_t s;
      if (out == in) s = i;
      else if (out == 2 * in) s = i >> 1;
      else {
        s = (int64_t)floorf((float)i * scale);
        if (s > in - 1) s = in - 1;
      }
      ix[0] = s;
      w[0] = 1;
    } else if (mode == VTL_INTERP_BILINEAR) {
      float src = scale * ((float)i + 0.5f) - 0.5f;
      if (src < 0) src = 0;
      int64_t i0 = (int64_t)src;
      if (i0 > in - 1) i0 = in - 1;
      float l1 = src - (float)i0;
      ix[0] = i0;
      ix[1] = i0 < in - 1 ? i0 + 1 : i0;
      w[0] = 1 - l1;
      w[1] = l1;
    } else {
      float src = scale * ((float)i + 0.5f) - 0.5f;
      float f = floorf(src);
      int64_t x0 = (int64_t)f;
      float t = src - f;
      const float a = -0.75f;
      w[0] = cubic2(t + 1, a);
      w[1] = cubic1(t, a);
      w[2] = cubic1(1 - t, a);
      w[3] = cubic2(2 - t, a);
      for (int j = 0; j < 4; j++) ix[j] = clamp64(x0 - 1 + j, 0, in - 1);
    }
  }
  return VTL_OK;
}

static void weights_free(axis_weights *aw) {
  free(aw->idx);
  free(aw->w);
}

/* src (c, h, w) -> dst (c, h, ow) along the width */
static void resample_w(const vtl_image_view *src, const vtl_image_view *dst, const axis_weights *aw) {
  int64_t rows = src->c * src->h;
  int k = aw->k;
  #pragma omp parallel for schedule(static) if (rows * dst->w * k > 32768 && !omp_in_parallel())
  for (int64_t r = 0; r < rows; r++) {
    int64_t c = r / src->h, y = r % src->h;
    int64_t sb = c * src->sc + y * src->sh, db = c * dst->sc + y * dst->sh;
    for (int64_t x = 0; x < dst->w; x++) {
      const int64_t *ix = aw->idx + x * k;
      const float *w = aw->w + x * k;
      float acc = 0;
      for (int j = 0; j < k; j++) acc += w[j] * px_load(src, sb + ix[j] * src->sw);
      px_store(dst, db + x * dst->sw, acc);
    }
  }
}

/* src (c, h, w) -> dst (c, oh, w) along the height */
static void resample_h(const vtl_image_view *src, const vtl_image_view *dst, const axis_weights *aw) {
  int64_t rows = dst->c * dst->h;
  int k = aw->k;
  #pragma omp parallel for schedule(static) if (rows * dst->w * k > 32768 && !omp_in_parallel())
  for (int64_t r = 0; r < rows; r++) {
    int64_t c = r / dst->h, y = r % dst->h;
    const int64_t *iy = aw->idx + y * k;
    const float *w = aw->w + y * k;
    int64_t db = c * dst->sc + y * dst->sh;
    for (int64_t x = 0; x < dst->w; x++) {
      int64_t sb = c * src->sc + x * src->sw;
      float acc = 0;
      for (int j = 0; j < k; j++) acc += w[j] * px_load(src, sb + iy[j] * src->sh);
      px_store(dst, db + x * dst->sw, acc);
    }
  }
}

static void copy_planes(const vtl_image_view *src, const vtl_image_view *dst) {
  int64_t rows = src->c * src->h;
  #pragma omp parallel for schedule(static) if (rows * src->w > 65536 && !omp_in_parallel())
  for (int64_t r = 0; r < rows; r++) {
    int64_t c = r / src->h, y = r % src->h;
    int64_t sb = c * src->sc + y * src->sh, db = c * dst->sc + y * dst->sh;
    for (int64_t x = 0; x < src->w; x++) px_store(dst, db + x * dst->sw, px_load(src, sb + x * src->sw));
  }
}

/* ---- u8 interleaved fast path ----
   The same weights and the same float arithmetic per tap as resample_w / resample_h (width
   first, float intermediate, rounding half to even), laid out for SIMD: each pixel's channels
   padded to four float lanes, so a tap is one 4-lane multiply-add in the width pass, and the
   height pass runs along whole rows of the intermediate. */

typedef float v4f __attribute__((vector_size(16)));

/* identity weights for an axis that keeps its size */
static vtl_status weights_identity(axis_weights *aw, int64_t n) {
  aw->k = 1;
  aw->idx = malloc(sizeof *aw->idx * (size_t)n);
  aw->w = malloc(sizeof *aw->w * (size_t)n);
  if (!aw->idx || !aw->w) {
    free(aw->idx);
    free(aw->w);
    return vtl_error_set(VTL_ERR_OOM, "resize: out of memory for the resampling weights");
  }
  for (int64_t i = 0; i < n; i++) { aw->idx[i] = i; aw->w[i] = 1; }
  return VTL_OK;
}

#define RESIZE_STRIP 16 /* pixels of one output row accumulated in registers at a time */

// src: (C,H,W) u8 with channel stride 1 (C <= 4), dst: (C,OH,OW) u8 with channel stride 1
static vtl_status resize_u8_interleaved(const vtl_image_view *src, const vtl_image_view *dst,
                                        const axis_weights *ww, const axis_weights *wh) {
  const int64_t H = src->h, W = src->w, OH = dst->h, OW = dst->w, C = src->c;
  const int kw = ww->k, kh = wh->k;
  v4f *mid = malloc(sizeof *mid * (size_t)(H * OW)); /* (H, OW) pixels of 4 lanes */
  if (!mid) return vtl_error_set(VTL_ERR_OOM, "resize: out of memory for the intermediate image");
  bool failed = false;
  const uint8_t *s8 = src->data;
  uint8_t *d8 = dst->data;
  bool par = H * OW * kw > 32768 && !omp_in_parallel();
  #pragma omp parallel if (par)
  {
    v4f *row = malloc(sizeof *row * (size_t)W);
    if (!row) {
      #pragma omp atomic write
      failed = true;
    } else {
      #pragma omp for schedule(static)
      for (int64_t y = 0; y < H; y++) {
        const uint8_t *sp = s8 + y * src->sh;
        int64_t x0 = 0;
#ifdef __SSE4_1__
        if (C == 3 && src->sw == 3) {
          /* 4 bytes per pixel read (the 4th belongs to the next pixel, so not for the last) */
          const __m128i keep3 = _mm_set_epi32(0, -1, -1, -1);
          for (; x0 < W - 1; x0++) {
            int32_t u;
            memcpy(&u, sp + 3 * x0, 4);
            __m128i q = _mm_and_si128(_mm_cvtepu8_epi32(_mm_cvtsi32_si128(u)), keep3);
            row[x0] = (v4f)_mm_cvtepi32_ps(q);
          }
        }
#endif
        for (int64_t x = x0; x < W; x++) {
          v4f p = {0, 0, 0, 0};
          for (int64_t c = 0; c < C; c++) p[c] = (float)sp[x * src->sw + c];
          row[x] = p;
        }
        v4f *m = mid + y * OW;
        int64_t x = 0;
        for (; x + 1 < OW; x += 2) { /* two pixels: two independent accumulation chains */
          const int64_t *ia = ww->idx + x * kw, *ib = ia + kw;
          const float *wa = ww->w + x * kw, *wb = wa + kw;
          v4f a = {0, 0, 0, 0}, b = {0, 0, 0, 0};
          for (int j = 0; j < kw; j++) {
            a += wa[j] * row[ia[j]];
            b += wb[j] * row[ib[j]];
          }
          m[x] = a;
          m[x + 1] = b;
        }
        for (; x < OW; x++) {
          const int64_t *ix = ww->idx + x * kw;
          const float *w = ww->w + x * kw;
          v4f acc = {0, 0, 0, 0};
          for (int j = 0; j < kw; j++) acc += w[j] * row[ix[j]];
          m[x] = acc;
        }
      }
      free(row);
    }
  }
  if (failed) {
    free(mid);
    return vtl_error_set(VTL_ERR_OOM, "resize: out of memory for a row buffer");
  }
  #pragma omp parallel for schedule(static) if (OH * OW * kh > 32768 && !omp_in_parallel())
  for (int64_t y = 0; y < OH; y++) {
    const int64_t *iy = wh->idx + y * kh;
    const float *w = wh->w + y * kh;
    uint8_t *dp = d8 + y * dst->sh;
    for (int64_t x0 = 0; x0 < OW; x0 += RESIZE_STRIP) {
      int64_t len = OW - x0 < RESIZE_STRIP ? OW - x0 : RESIZE_STRIP;
      v4f acc[RESIZE_STRIP];
      for (int t = 0; t < RESIZE_STRIP; t++) acc[t] = (v4f){0, 0, 0, 0};
      for (int j = 0; j < kh; j++) {
        const v4f *m = mid + iy[j] * OW + x0;
        float wj = w[j];
        if (len == RESIZE_STRIP)
          for (int t = 0; t < RESIZE_STRIP; t++) acc[t] += wj * m[t];
        else
          for (int64_t t = 0; t < len; t++) acc[t] += wj * m[t];
      }
      for (int64_t t = 0; t < len; t++) {
        uint8_t *o = dp + (x0 + t) * dst->sw;
#ifdef __SSE2__
        /* round half to even (the default rounding mode), saturate to 0..255 */
        __m128i q = _mm_cvtps_epi32((__m128)acc[t]);
        q = _mm_packus_epi16(_mm_packs_epi32(q, q), q);
        uint32_t u = (uint32_t)_mm_cvtsi128_si32(q);
        if (C == 3) {
          o[0] = (uint8_t)u;
          o[1] = (uint8_t)(u >> 8);
          o[2] = (uint8_t)(u >> 16);
          continue;
        }
        for (int64_t c = 0; c < C; c++) o[c] = (uint8_t)(u >> (8 * c));
#else
        for (int64_t c = 0; c < C; c++) {
          float r = nearbyintf(acc[t][c]);
          o[c] = (uint8_t)(r >= 0 ? (r <= 255 ? r : 255) : 0);
        }
#endif
      }
    }
  }
  free(mid);
  return VTL_OK;
}

// src: (C,H,W) u8/f32, dst: (C,OH,OW) u8/f32, any strides
vtl_status vtl_cpu_image_resize(const vtl_image_view *src, const vtl_image_view *dst, vtl_interp mode,
                                bool antialias) {
  bool dw = dst->w != src->w, dh = dst->h != src->h;
  if (!dw && !dh) {
    copy_planes(src, dst);
    return VTL_OK;
  }
  if (src->dtype == VTL_U8 && dst->dtype == VTL_U8 && src->c <= 4 && (src->c == 1 || (src->sc == 1 && dst->sc == 1))) {
    axis_weights ww = {0}, wh = {0};
    vtl_status st = dw ? weights_make(&ww, src->w, dst->w, mode, antialias) : weights_identity(&ww, src->w);
    if (st != VTL_OK) return st;
    st = dh ? weights_make(&wh, src->h, dst->h, mode, antialias) : weights_identity(&wh, src->h);
    if (st == VTL_OK) {
      st = resize_u8_interleaved(src, dst, &ww, &wh);
      weights_free(&wh);
    }
    weights_free(&ww);
    return st;
  }
  axis_weights ww = {0}, wh = {0};
  if (dw && weights_make(&ww, src->w, dst->w, mode, antialias) != VTL_OK) return VTL_ERR_OOM;
  if (dh && weights_make(&wh, src->h, dst->h, mode, antialias) != VTL_OK) {
    weights_free(&ww);
    return VTL_ERR_OOM;
  }
  vtl_status st = VTL_OK;
  if (dw && dh) {
    /* width first into a float (C, H, OW) buffer, then height */
    float *tmp = malloc(sizeof *tmp * (size_t)(src->c * src->h * dst->w));
    if (!tmp) {
      st = vtl_error_set(VTL_ERR_OOM, "resize: out of memory for the intermediate image");
    } else {
      vtl_image_view mid = {tmp, VTL_F32, src->c, src->h, dst->w, src->h * dst->w, dst->w, 1};
      resample_w(src, &mid, &ww);
      resample_h(&mid, dst, &wh);
      free(tmp);
    }
  } else if (dw) {
    resample_w(src, dst, &ww);
  } else {
    resample_h(src, dst, &wh);
  }
  if (dw) weights_free(&ww);
  if (dh) weights_free(&wh);
  return st;
}

// src: (C,H,W), dst: (C,OH,OW); dst[c][y][x] = src[c][y+top][x+left] or fill outside
void vtl_cpu_image_crop(const vtl_image_view *src, const vtl_image_view *dst, int64_t top, int64_t left,
                        double fill) {
  int64_t rows = dst->c * dst->h;
  #pragma omp parallel for schedule(static) if (rows * dst->w > 65536 && !omp_in_parallel())
  for (int64_t r = 0; r < rows; r++) {
    int64_t c = r / dst->h, y = r % dst->h, sy = y + top;
    int64_t db = c * dst->sc + y * dst->sh;
    bool row_in = sy >= 0 && sy < src->h;
    for (int64_t x = 0; x < dst->w; x++) {
      int64_t sx = x + left;
      float v = row_in && sx >= 0 && sx < src->w ? px_load(src, c * src->sc + sy * src->sh + sx * src->sw)
                                                 : (float)fill;
      px_store(dst, db + x * dst->sw, v);
    }
  }
}

// src, dst: (C,H,W)
void vtl_cpu_image_flip(const vtl_image_view *src, const vtl_image_view *dst, bool horizontal) {
  int64_t rows = dst->c * dst->h;
  if (src->dtype == VTL_U8 && dst->dtype == VTL_U8 && (src->c == 1 || (src->sc == 1 && dst->sc == 1))) {
    /* u8 interleaved: whole pixels (C bytes) moved per step */
    const int64_t C = src->c, W = dst->w;
    #pragma omp parallel for schedule(static) if (dst->h * W * C > 65536 && !omp_in_parallel())
    for (int64_t y = 0; y < dst->h; y++) {
      int64_t sy = horizontal ? y : src->h - 1 - y;
      const uint8_t *sp = (const uint8_t *)src->data + sy * src->sh;
      uint8_t *dp = (uint8_t *)dst->data + y * dst->sh;
      if (!horizontal && src->sw == C && dst->sw == C) {
        memcpy(dp, sp, (size_t)(W * C));
      } else if (C == 3 && src->sw == 3 && dst->sw == 3) {
        for (int64_t x = 0; x < W; x++) {
          const uint8_t *p = sp + (W - 1 - x) * 3;
          dp[3 * x] = p[0];
          dp[3 * x + 1] = p[1];
          dp[3 * x + 2] = p[2];
        }
      } else {
        for (int64_t x = 0; x < W; x++) {
          int64_t sx = horizontal ? W - 1 - x : x;
          for (int64_t c = 0; c < C; c++) dp[x * dst->sw + c] = sp[sx * src->sw + c];
        }
      }
    }
    return;
  }
  #pragma omp parallel for schedule(static) if (rows * dst->w > 65536 && !omp_in_parallel())
  for (int64_t r = 0; r < rows; r++) {
    int64_t c = r / dst->h, y = r % dst->h;
    int64_t sy = horizontal ? y : src->h - 1 - y;
    int64_t sb = c * src->sc + sy * src->sh, db = c * dst->sc + y * dst->sh;
    for (int64_t x = 0; x < dst->w; x++) {
      int64_t sx = horizontal ? src->w - 1 - x : x;
      px_store(dst, db + x * dst->sw, px_load(src, sb + sx * src->sw));
    }
  }
}

// src, dst: (C,H,W); dst = (src * mul / div - mean[c]) / std[c]
void vtl_cpu_image_affine(const vtl_image_view *src, const vtl_image_view *dst, float mul, float div,
                          const double *mean, const double *std) {
  int64_t rows = dst->c * dst->h;
  bool to_u8 = dst->dtype == VTL_U8;
  if (src->dtype == VTL_U8 && !to_u8 && dst->sw == 1 && mul == 1 && dst->c <= 4) {
    /* u8 -> f32 (to_tensor, with or without normalize): each channel's 256 possible results,
       computed with the same float operations in the same order as the generic loop below,
       looked up per pixel */
    float lut[4][256];
    for (int64_t c = 0; c < dst->c; c++) {
      float m = mean ? (float)mean[c] : 0.0f, s = std ? (float)std[c] : 1.0f;
      for (int v = 0; v < 256; v++) {
        float f = (float)v;
        if (div != 1) f /= div;
        if (mean) f = (f - m) / s;
        lut[c][v] = f;
      }
    }
    #pragma omp parallel for schedule(static) if (rows * dst->w > 65536 && !omp_in_parallel())
    for (int64_t r = 0; r < rows; r++) {
      int64_t c = r / dst->h, y = r % dst->h;
      const uint8_t *sp = (const uint8_t *)src->data + c * src->sc + y * src->sh;
      float *dp = (float *)dst->data + c * dst->sc + y * dst->sh;
      const float *t = lut[c];
      const int64_t sw = src->sw, w = dst->w;
      for (int64_t x = 0; x < w; x++) dp[x] = t[sp[x * sw]];
    }
    return;
  }
  #pragma omp parallel for schedule(static) if (rows * dst->w > 65536 && !omp_in_parallel())
  for (int64_t r = 0; r < rows; r++) {
    int64_t c = r / dst->h, y = r % dst->h;
    float m = mean ? (float)mean[c] : 0.0f, s = std ? (float)std[c] : 1.0f;
    int64_t sb = c * src->sc + y * src->sh, db = c * dst->sc + y * dst->sh;
    for (int64_t x = 0; x < dst->w; x++) {
      float v = px_load(src, sb + x * src->sw);
      if (mul != 1) v *= mul;
      if (div != 1) v /= div;
      if (mean) v = (v - m) / s;
      if (to_u8) {
        float f = floorf(v + 0.5f);
        ((uint8_t *)dst->data)[db + x * dst->sw] = (uint8_t)(f >= 0 ? (f <= 255 ? f : 255) : 0);
      } else {
        ((float *)dst->data)[db + x * dst->sw] = v;
      }
    }
  }
}
