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

// src: (C,H,W) u8/f32, dst: (C,OH,OW) u8/f32, any strides
vtl_status vtl_cpu_image_resize(const vtl_image_view *src, const vtl_image_view *dst, vtl_interp mode,
                                bool antialias) {
  bool dw = dst->w != src->w, dh = dst->h != src->h;
  if (!dw && !dh) {
    copy_planes(src, dst);
    return VTL_OK;
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
