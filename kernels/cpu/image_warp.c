/*
 * Geometry kernels for the image transforms: the inverse-affine warp behind rotate and affine,
 * padding (constant, edge, reflect, symmetric) and erasing a rectangle.
 *
 * The warp reproduces torchvision's tensor path: an output pixel's centred coordinates go
 * through the inverse matrix rescaled to [-1, 1] (_gen_affine_grid) and are sampled as
 * grid_sample(mode, padding_mode="zeros", align_corners=False) does on the CPU, in float32 with
 * the same operation order. With a fill colour, a ones-channel is sampled alongside and the
 * result blended with the fill by it (_apply_grid_transform), which also darkens bilinear
 * borders exactly as torchvision does.
 */
#pragma GCC optimize("fp-contract=off")
#include <math.h>
#include <stdlib.h>
#include <omp.h>
#include "image.h"
#include "image_px.h"

// src: (C,H,W), dst: (C,OH,OW); m: the 2×3 inverse matrix in centred pixel coordinates
void vtl_cpu_image_warp(const vtl_image_view *src, const vtl_image_view *dst, const double m[6], vtl_interp mode,
                        const float *fill) {
  const float hw = (float)(0.5 * (double)src->w), hh = (float)(0.5 * (double)src->h);
  const float r0 = (float)m[0] / hw, r1 = (float)m[1] / hw, r2 = (float)m[2] / hw;
  const float r3 = (float)m[3] / hh, r4 = (float)m[4] / hh, r5 = (float)m[5] / hh;
  const float sw = (float)src->w / 2, sh = (float)src->h / 2;
  const int64_t W = src->w, H = src->h, C = src->c;
  const float x0 = (float)(-(double)dst->w * 0.5 + 0.5), y0 = (float)(-(double)dst->h * 0.5 + 0.5);
  const bool nearest = mode == VTL_INTERP_NEAREST;
  #pragma omp parallel for schedule(static) if (dst->h * dst->w * C * 4 > VTL_IMAGE_PAR_WORK && !omp_in_parallel())
  for (int64_t y = 0; y < dst->h; y++) {
    const float yb = y0 + (float)y;
    for (int64_t x = 0; x < dst->w; x++) {
      const float xb = x0 + (float)x;
      const float gx = xb * r0 + yb * r1 + r2;
      const float gy = xb * r3 + yb * r4 + r5;
      const float ix = (gx + 1.0f) * sw - 0.5f, iy = (gy + 1.0f) * sh - 0.5f;
      const int64_t dbase = y * dst->sh + x * dst->sw;
      if (nearest) {
        const float fx = nearbyintf(ix), fy = nearbyintf(iy);
        const bool in = fx >= 0 && fy >= 0 && fx < (float)W && fy < (float)H;
        const int64_t sx = in ? (int64_t)fx : 0, sy = in ? (int64_t)fy : 0;
        for (int64_t c = 0; c < C; c++) {
          float v = in ? vtl_px_load(src, c * src->sc + sy * src->sh + sx * src->sw) : 0.0f;
          if (!in && fill) v = fill[c];
          vtl_px_store(dst, dbase + c * dst->sc, v, VTL_PX_ROUND);
        }
        continue;
      }
      /* clamped before the integer conversion (far-off or NaN coordinates: outside) */
      const float fxw = fminf(fmaxf(floorf(ix), -2.0f), (float)W), fyn = fminf(fmaxf(floorf(iy), -2.0f), (float)H);
      const float we = ix - floorf(ix), wn = iy - floorf(iy); /* distances from the west column and north row */
      const float e = 1.0f - we, s = 1.0f - wn;
      const float nw = s * e, ne = s * we, sw_ = wn * e, se = wn * we;
      const int64_t xw = (int64_t)fxw, yn = (int64_t)fyn, xe = xw + 1, ys = yn + 1;
      const bool in_w = fxw >= 0 && fxw < (float)W, in_e = xe >= 0 && xe < W;
      const bool in_n = fyn >= 0 && fyn < (float)H, in_s = ys >= 0 && ys < H;
      const bool mnw = in_n && in_w, mne = in_n && in_e, msw = in_s && in_w, mse = in_s && in_e;
      float mask = 1.0f;
      if (fill) mask = (mnw ? nw : 0.0f) + (mne ? ne : 0.0f) + (msw ? sw_ : 0.0f) + (mse ? se : 0.0f);
      for (int64_t c = 0; c < C; c++) {
        const int64_t cb = c * src->sc;
        float vnw = mnw ? vtl_px_load(src, cb + yn * src->sh + xw * src->sw) : 0.0f;
        float vne = mne ? vtl_px_load(src, cb + yn * src->sh + xe * src->sw) : 0.0f;
        float vsw = msw ? vtl_px_load(src, cb + ys * src->sh + xw * src->sw) : 0.0f;
        float vse = mse ? vtl_px_load(src, cb + ys * src->sh + xe * src->sw) : 0.0f;
        float v = vnw * nw + vne * ne + vsw * sw_ + vse * se;
        if (fill) v = v * mask + (1.0f - mask) * fill[c];
        vtl_px_store(dst, dbase + c * dst->sc, v, VTL_PX_ROUND);
      }
    }
  }
}

/* index i of an axis of n samples under a padding mode, or -1 for the constant fill */
static inline int64_t pad_index(int64_t i, int64_t n, vtl_pad_mode mode) {
  if (i >= 0 && i < n) return i;
  switch (mode) {
  case VTL_PAD_EDGE: return i < 0 ? 0 : n - 1;
  case VTL_PAD_REFLECT: {
    if (n == 1) return 0;
    int64_t period = 2 * (n - 1);
    i %= period;
    if (i < 0) i += period;
    return i < n ? i : period - i;
  }
  case VTL_PAD_SYMMETRIC: {
    int64_t period = 2 * n;
    i %= period;
    if (i < 0) i += period;
    return i < n ? i : period - 1 - i;
  }
  default: return -1;
  }
}

// src: (C,H,W), dst: (C,OH,OW); dst[c][y][x] = src[c][y - top][x - left], indices outside the
// image mapped by mode (constant: fill)
void vtl_cpu_image_pad(const vtl_image_view *src, const vtl_image_view *dst, int64_t top, int64_t left,
                       vtl_pad_mode mode, double fill) {
  int64_t rows = dst->c * dst->h;
  const float f = (float)fill;
  #pragma omp parallel for schedule(static) if (rows * dst->w > VTL_IMAGE_PAR_WORK && !omp_in_parallel())
  for (int64_t row = 0; row < rows; row++) {
    int64_t c = row / dst->h, y = row % dst->h;
    int64_t sy = pad_index(y - top, src->h, mode);
    int64_t db = c * dst->sc + y * dst->sh;
    for (int64_t x = 0; x < dst->w; x++) {
      int64_t sx = pad_index(x - left, src->w, mode);
      float v = sy >= 0 && sx >= 0 ? vtl_px_load(src, c * src->sc + sy * src->sh + sx * src->sw) : f;
      vtl_px_store(dst, db + x * dst->sw, v, VTL_PX_TRUNC);
    }
  }
}

// img: (C,H,W) written in place; rows top..top+h-1, columns left..left+w-1 set to values[c]
// (nvalues 1 or C) or, when noise is given, to noise (C,h,w) (u8: truncated and clamped)
void vtl_cpu_image_erase(const vtl_image_view *img, int64_t top, int64_t left, int64_t h, int64_t w,
                         const float *values, int nvalues, const vtl_image_view *noise) {
  for (int64_t c = 0; c < img->c; c++)
    for (int64_t y = 0; y < h; y++) {
      int64_t db = c * img->sc + (top + y) * img->sh;
      for (int64_t x = 0; x < w; x++) {
        float v = noise ? vtl_px_load(noise, c * noise->sc + y * noise->sh + x * noise->sw)
                        : values[nvalues == 1 ? 0 : c];
        vtl_px_store(img, db + (left + x) * img->sw, v, VTL_PX_TRUNC);
      }
    }
}
