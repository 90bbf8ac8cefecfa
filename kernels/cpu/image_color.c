/*
 * Colour and filter kernels for the image transforms: blending (brightness, contrast,
 * saturation, sharpness), grayscale, hue rotation through HSV, per-channel point maps (invert,
 * posterize, solarize, autocontrast, equalize), Gaussian blur and the 3×3 smoothing behind
 * adjust_sharpness.
 *
 * Arithmetic follows torchvision's tensor functions step by step in float32 — the same
 * products and sums in the same order, no fused multiply-adds — so that the u8 results, which
 * torchvision truncates (`.to(uint8)`) or rounds (`torch.round`) at the end, land on the same
 * integers. Reductions (means, extrema, histograms) run serially: these kernels are called on
 * one image at a time from loader threads.
 */
#pragma GCC optimize("fp-contract=off")
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>
#include "image.h"
#include "image_px.h"

#define ROWS_PARALLEL(rows, work) if ((rows) * (work) > VTL_IMAGE_PAR_WORK && !omp_in_parallel())

/* ---- u8 tables ----
   On u8 images every product of a float constant with a pixel takes one of 256 values, so the
   u8 paths look the products up in tables filled with the very float operations the generic
   path performs per pixel; sums, clamps and truncations stay per pixel, in the same order. The
   results are bit-identical to the float path. */

/* tab[v] = k * v for v in 0..255 */
static void table_scale(float *tab, float k) {
  for (int v = 0; v < 256; v++) tab[v] = k * (float)v;
}

/* the grayscale tables: 0.2989 R, 0.587 G, 0.114 B */
typedef struct { float r[256], g[256], b[256]; } gray_tables;

static void gray_tables_fill(gray_tables *t) {
  table_scale(t->r, 0.2989f);
  table_scale(t->g, 0.587f);
  table_scale(t->b, 0.114f);
}

/* truncated u8 gray of one pixel (the sum is in [0, 255]: no clamp needed) */
static inline uint8_t gray_u8(const gray_tables *t, const uint8_t *p, int64_t sc) {
  return (uint8_t)(t->r[p[0]] + t->g[p[sc]] + t->b[p[2 * sc]]);
}

static inline uint8_t clamp_trunc_u8(float v) { return (uint8_t)(v < 0 ? 0 : v > 255.0f ? 255.0f : v); }

// src, dst: (C,H,W) u8; dst = trunc(clamp(ratio * src + q * scalar, 0, 255)) through a table
static void blend_scalar_u8(const vtl_image_view *src, float r, float qs, const vtl_image_view *dst) {
  uint8_t lut[256];
  for (int v = 0; v < 256; v++) lut[v] = clamp_trunc_u8(r * (float)v + qs);
  const uint8_t *s = src->data;
  uint8_t *d = dst->data;
  int64_t C = dst->c, H = dst->h, W = dst->w;
  if (C == 1 || (src->sc == 1 && dst->sc == 1 && src->sw == C && dst->sw == C)) {
    /* each row's pixels are one run of W*C bytes */
    for (int64_t y = 0; y < H; y++) {
      const uint8_t *sp = s + y * src->sh;
      uint8_t *dp = d + y * dst->sh;
      if (C == 1 && (src->sw != 1 || dst->sw != 1)) {
        for (int64_t x = 0; x < W; x++) dp[x * dst->sw] = lut[sp[x * src->sw]];
      } else {
        for (int64_t i = 0; i < W * C; i++) dp[i] = lut[sp[i]];
      }
    }
    return;
  }
  for (int64_t c = 0; c < C; c++)
    for (int64_t y = 0; y < H; y++)
      for (int64_t x = 0; x < W; x++)
        d[c * dst->sc + y * dst->sh + x * dst->sw] = lut[s[c * src->sc + y * src->sh + x * src->sw]];
}

/* one row of packed RGB pixels: the products computed rather than looked up, in a form the
   compiler vectorizes (the gray sum lies in [0, 255), so int truncation is the u8 truncation) */
static void saturation_row_packed(const uint8_t *restrict sp, uint8_t *restrict dp, int64_t n, float r, float q) {
  for (int64_t x = 0; x < n; x++) {
    float pr = sp[3 * x], pg = sp[3 * x + 1], pb = sp[3 * x + 2];
    int gi = (int)(0.2989f * pr + 0.587f * pg + 0.114f * pb);
    float b = q * (float)gi;
    float vr = r * pr + b, vg = r * pg + b, vb = r * pb + b;
    vr = vr < 0 ? 0 : vr;
    vr = vr > 255.0f ? 255.0f : vr;
    vg = vg < 0 ? 0 : vg;
    vg = vg > 255.0f ? 255.0f : vg;
    vb = vb < 0 ? 0 : vb;
    vb = vb > 255.0f ? 255.0f : vb;
    dp[3 * x] = (uint8_t)(int)vr;
    dp[3 * x + 1] = (uint8_t)(int)vg;
    dp[3 * x + 2] = (uint8_t)(int)vb;
  }
}

// src, dst: (3,H,W) u8; adjust_saturation: dst = trunc(clamp(ratio * src + q * gray(src), 0, 255))
// with gray truncated to u8 first, in one pass (no grayscale image)
void vtl_cpu_image_saturation_u8(const vtl_image_view *src, double ratio, const vtl_image_view *dst) {
  const float r = (float)ratio, q = (float)(1.0 - ratio);
  if (src->sc == 1 && dst->sc == 1 && src->sw == 3 && dst->sw == 3) {
    for (int64_t y = 0; y < src->h; y++)
      saturation_row_packed((const uint8_t *)src->data + y * src->sh, (uint8_t *)dst->data + y * dst->sh, src->w, r, q);
    return;
  }
  gray_tables gt;
  gray_tables_fill(&gt);
  float rs[256], qg[256];
  table_scale(rs, r);
  table_scale(qg, q);
  const uint8_t *s = src->data;
  uint8_t *d = dst->data;
  for (int64_t y = 0; y < src->h; y++) {
    const uint8_t *sp = s + y * src->sh;
    uint8_t *dp = d + y * dst->sh;
    for (int64_t x = 0; x < src->w; x++) {
      const uint8_t *p = sp + x * src->sw;
      float b = qg[gray_u8(&gt, p, src->sc)];
      uint8_t *o = dp + x * dst->sw;
      o[0] = clamp_trunc_u8(rs[p[0]] + b);
      o[dst->sc] = clamp_trunc_u8(rs[p[src->sc]] + b);
      o[2 * dst->sc] = clamp_trunc_u8(rs[p[2 * src->sc]] + b);
    }
  }
}

/* ---- blend ---- */

// src, dst: (C,H,W); other: (C or 1,H,W) or NULL for the constant `scalar`
// dst = clamp(ratio * src + (1 - ratio) * other, 0, bound), u8 truncated
void vtl_cpu_image_blend(const vtl_image_view *src, const vtl_image_view *other, float scalar, double ratio,
                         const vtl_image_view *dst) {
  const float r = (float)ratio, q = (float)(1.0 - ratio);
  const float bound = src->dtype == VTL_U8 ? 255.0f : 1.0f;
  const float qs = q * scalar;
  if (!other && src->dtype == VTL_U8) {
    blend_scalar_u8(src, r, qs, dst);
    return;
  }
  int64_t rows = dst->c * dst->h;
  #pragma omp parallel for schedule(static) ROWS_PARALLEL(rows, dst->w)
  for (int64_t row = 0; row < rows; row++) {
    int64_t c = row / dst->h, y = row % dst->h;
    int64_t sb = c * src->sc + y * src->sh, db = c * dst->sc + y * dst->sh;
    int64_t ob = other ? (other->c == 1 ? 0 : c * other->sc) + y * other->sh : 0;
    for (int64_t x = 0; x < dst->w; x++) {
      float a = r * vtl_px_load(src, sb + x * src->sw);
      float b = other ? q * vtl_px_load(other, ob + x * other->sw) : qs;
      float v = a + b;
      v = v < 0 ? 0 : v > bound ? bound : v;
      vtl_px_store(dst, db + x * dst->sw, v, VTL_PX_TRUNC);
    }
  }
}

/* ---- grayscale ---- */

static inline float gray_of(float r, float g, float b) { return 0.2989f * r + 0.587f * g + 0.114f * b; }

// src: (3,H,W), dst: (K,H,W) with every channel 0.2989 R + 0.587 G + 0.114 B (u8 truncated)
void vtl_cpu_image_grayscale(const vtl_image_view *src, const vtl_image_view *dst) {
  int64_t rows = src->h;
  #pragma omp parallel for schedule(static) ROWS_PARALLEL(rows, dst->w * 3)
  for (int64_t y = 0; y < rows; y++) {
    int64_t sb = y * src->sh, db = y * dst->sh;
    for (int64_t x = 0; x < src->w; x++) {
      int64_t o = sb + x * src->sw;
      float v = gray_of(vtl_px_load(src, o), vtl_px_load(src, o + src->sc), vtl_px_load(src, o + 2 * src->sc));
      for (int64_t c = 0; c < dst->c; c++) vtl_px_store(dst, db + c * dst->sc + x * dst->sw, v, VTL_PX_TRUNC);
    }
  }
}

// src: (C,H,W) with C 1 or 3: the mean over all pixels of the grayscale image (u8: of its
// truncated values), as adjust_contrast's blend target
double vtl_cpu_image_gray_mean(const vtl_image_view *src) {
  double total = 0;
  if (src->dtype == VTL_U8 && src->c == 3) {
    /* integer row sums: exact, so equal to the float path's double sums */
    gray_tables gt;
    gray_tables_fill(&gt);
    const uint8_t *s = src->data;
    const bool packed = src->sc == 1 && src->sw == 3;
    for (int64_t y = 0; y < src->h; y++) {
      const uint8_t *sp = s + y * src->sh;
      int64_t row = 0;
      if (packed) {
        /* computed products (vectorizes); the sum is in [0, 255), int truncation = u8's */
        for (int64_t x = 0; x < src->w; x++)
          row += (int)(0.2989f * (float)sp[3 * x] + 0.587f * (float)sp[3 * x + 1] + 0.114f * (float)sp[3 * x + 2]);
      } else {
        for (int64_t x = 0; x < src->w; x++) row += gray_u8(&gt, sp + x * src->sw, src->sc);
      }
      total += (double)row;
    }
    return total / (double)(src->h * src->w);
  }
  for (int64_t y = 0; y < src->h; y++) {
    double row = 0;
    for (int64_t x = 0; x < src->w; x++) {
      int64_t o = y * src->sh + x * src->sw;
      float v;
      if (src->c == 3) {
        v = gray_of(vtl_px_load(src, o), vtl_px_load(src, o + src->sc), vtl_px_load(src, o + 2 * src->sc));
        if (src->dtype == VTL_U8) v = truncf(v);
      } else {
        v = vtl_px_load(src, o);
      }
      row += v;
    }
    total += row;
  }
  return total / (double)(src->h * src->w);
}

/* ---- hue ---- */

// src, dst: (3,H,W); RGB -> HSV, h += hue (mod 1), HSV -> RGB, as torchvision's _rgb2hsv/_hsv2rgb
void vtl_cpu_image_hue(const vtl_image_view *src, const vtl_image_view *dst, double hue) {
  const bool u8 = src->dtype == VTL_U8;
  const float hf = (float)hue;
  int64_t rows = src->h;
  #pragma omp parallel for schedule(static) ROWS_PARALLEL(rows, dst->w * 24)
  for (int64_t y = 0; y < rows; y++) {
    for (int64_t x = 0; x < src->w; x++) {
      int64_t o = y * src->sh + x * src->sw;
      float r = vtl_px_load(src, o), g = vtl_px_load(src, o + src->sc), b = vtl_px_load(src, o + 2 * src->sc);
      if (u8) { r /= 255.0f; g /= 255.0f; b /= 255.0f; }
      float maxc = fmaxf(r, fmaxf(g, b)), minc = fminf(r, fminf(g, b));
      bool eqc = maxc == minc;
      float cr = maxc - minc;
      float s = cr / (eqc ? 1.0f : maxc);
      float crd = eqc ? 1.0f : cr;
      float rc = (maxc - r) / crd, gc = (maxc - g) / crd, bc = (maxc - b) / crd;
      float hr = maxc == r ? bc - gc : 0.0f;
      float hg = maxc == g && maxc != r ? 2.0f + rc - bc : 0.0f;
      float hb = maxc != g && maxc != r ? 4.0f + gc - rc : 0.0f;
      float h = fmodf((hr + hg + hb) / 6.0f + 1.0f, 1.0f);
      h = fmodf(h + hf, 1.0f);
      if (h < 0) h += 1.0f;
      float v = maxc;
      float i = floorf(h * 6.0f);
      float f = h * 6.0f - i;
      float p = fminf(fmaxf(v * (1.0f - s), 0.0f), 1.0f);
      float q = fminf(fmaxf(v * (1.0f - s * f), 0.0f), 1.0f);
      float t = fminf(fmaxf(v * (1.0f - s * (1.0f - f)), 0.0f), 1.0f);
      int k = ((int)i % 6 + 6) % 6;
      float out[3];
      switch (k) {
      case 0: out[0] = v; out[1] = t; out[2] = p; break;
      case 1: out[0] = q; out[1] = v; out[2] = p; break;
      case 2: out[0] = p; out[1] = v; out[2] = t; break;
      case 3: out[0] = p; out[1] = q; out[2] = v; break;
      case 4: out[0] = t; out[1] = p; out[2] = v; break;
      default: out[0] = v; out[1] = p; out[2] = q; break;
      }
      int64_t d = y * dst->sh + x * dst->sw;
      for (int c = 0; c < 3; c++) vtl_px_store(dst, d + c * dst->sc, u8 ? out[c] * 255.0f : out[c], VTL_PX_TRUNC);
    }
  }
}

/* ---- point maps ---- */

// src, dst: (C,H,W); invert: bound - x; posterize (u8): x & mask; solarize: x >= t ? bound - x : x
void vtl_cpu_image_point(const vtl_image_view *src, const vtl_image_view *dst, vtl_point_op op, double param) {
  const float bound = src->dtype == VTL_U8 ? 255.0f : 1.0f;
  const float thr = (float)param;
  const unsigned mask = op == VTL_POINT_POSTERIZE ? (0xFFu << (8 - (int)param)) & 0xFFu : 0xFFu;
  int64_t rows = dst->c * dst->h;
  #pragma omp parallel for schedule(static) ROWS_PARALLEL(rows, dst->w)
  for (int64_t row = 0; row < rows; row++) {
    int64_t c = row / dst->h, y = row % dst->h;
    int64_t sb = c * src->sc + y * src->sh, db = c * dst->sc + y * dst->sh;
    for (int64_t x = 0; x < dst->w; x++) {
      float v = vtl_px_load(src, sb + x * src->sw);
      switch (op) {
      case VTL_POINT_INVERT: v = bound - v; break;
      case VTL_POINT_POSTERIZE: v = (float)((unsigned)v & mask); break;
      case VTL_POINT_SOLARIZE: if (v >= thr) v = bound - v; break;
      }
      vtl_px_store(dst, db + x * dst->sw, v, VTL_PX_TRUNC);
    }
  }
}

// src, dst: (C,H,W); each channel stretched so that its minimum maps to 0 and its maximum to the
// bound (a constant channel is left as it is)
void vtl_cpu_image_autocontrast(const vtl_image_view *src, const vtl_image_view *dst) {
  const float bound = src->dtype == VTL_U8 ? 255.0f : 1.0f;
  for (int64_t c = 0; c < src->c; c++) {
    float lo = INFINITY, hi = -INFINITY;
    for (int64_t y = 0; y < src->h; y++)
      for (int64_t x = 0; x < src->w; x++) {
        float v = vtl_px_load(src, c * src->sc + y * src->sh + x * src->sw);
        lo = fminf(lo, v);
        hi = fmaxf(hi, v);
      }
    float scale = bound / (hi - lo);
    if (!isfinite(scale)) { lo = 0; scale = 1; }
    #pragma omp parallel for schedule(static) ROWS_PARALLEL(src->h, src->w)
    for (int64_t y = 0; y < src->h; y++)
      for (int64_t x = 0; x < src->w; x++) {
        float v = (vtl_px_load(src, c * src->sc + y * src->sh + x * src->sw) - lo) * scale;
        v = v < 0 ? 0 : v > bound ? bound : v;
        vtl_px_store(dst, c * dst->sc + y * dst->sh + x * dst->sw, v, VTL_PX_TRUNC);
      }
  }
}

// src, dst: (C,H,W) u8; per-channel histogram equalisation (PIL's ImageOps.equalize algorithm, as
// torchvision's tensor equalize)
void vtl_cpu_image_equalize(const vtl_image_view *src, const vtl_image_view *dst) {
  const uint8_t *s = src->data;
  uint8_t *d = dst->data;
  for (int64_t c = 0; c < src->c; c++) {
    int64_t hist[256] = {0};
    for (int64_t y = 0; y < src->h; y++)
      for (int64_t x = 0; x < src->w; x++) hist[s[c * src->sc + y * src->sh + x * src->sw]]++;
    int64_t last = -1, nonzero_sum = 0;
    for (int i = 0; i < 256; i++)
      if (hist[i]) {
        if (last >= 0) nonzero_sum += hist[last];
        last = i;
      }
    int64_t step = nonzero_sum / 255;
    uint8_t lut[256];
    if (step == 0) {
      for (int i = 0; i < 256; i++) lut[i] = (uint8_t)i;
    } else {
      int64_t cum = 0;
      for (int i = 0; i < 256; i++) {
        int64_t v = (cum + step / 2) / step; /* uses the count below i */
        lut[i] = (uint8_t)(v > 255 ? 255 : v);
        cum += hist[i];
      }
    }
    for (int64_t y = 0; y < src->h; y++)
      for (int64_t x = 0; x < src->w; x++)
        d[c * dst->sc + y * dst->sh + x * dst->sw] = lut[s[c * src->sc + y * src->sh + x * src->sw]];
  }
}

/* ---- filters ---- */

/* index i of an axis of n samples, reflected at both ends without repeating the edge (as
   torch's reflect padding; repeated for offsets larger than the axis) */
static inline int64_t reflect_index(int64_t i, int64_t n) {
  if (n == 1) return 0;
  int64_t period = 2 * (n - 1);
  i %= period;
  if (i < 0) i += period;
  return i < n ? i : period - i;
}

/* torchvision's _get_gaussian_kernel1d in float32 */
static void gaussian_weights(float *k, int n, double sigma) {
  float half = (float)(n - 1) * 0.5f, sg = (float)sigma, sum = 0;
  for (int i = 0; i < n; i++) {
    /* linspace(-half, half, n): the first half counted from the start, the rest from the end */
    float x = i < n / 2 ? -half + (float)i : half - (float)(n - 1 - i);
    float z = x / sg;
    k[i] = expf(-0.5f * (z * z));
    sum += k[i];
  }
  for (int i = 0; i < n; i++) k[i] /= sum;
}

// src, dst: (C,H,W); separable Gaussian of kx×ky taps and sigmas sx, sy over reflect padding;
// u8 rounded half to even
vtl_status vtl_cpu_image_gaussian_blur(const vtl_image_view *src, const vtl_image_view *dst, int kx, int ky,
                                       double sx, double sy) {
  int64_t C = src->c, H = src->h, W = src->w, rows = C * H;
  float *wx = malloc(sizeof *wx * (size_t)(kx + ky));
  float *tmp = malloc(sizeof *tmp * (size_t)(rows * W));
  int64_t *ix = malloc(sizeof *ix * (size_t)(W * kx + H * ky)); /* source offsets per output and tap */
  if (!wx || !tmp || !ix) {
    free(wx);
    free(tmp);
    free(ix);
    return vtl_error_set(VTL_ERR_OOM, "gaussian_blur: out of memory");
  }
  float *wy = wx + kx;
  int64_t *iy = ix + W * kx;
  gaussian_weights(wx, kx, sx);
  gaussian_weights(wy, ky, sy);
  for (int64_t x = 0; x < W; x++)
    for (int j = 0; j < kx; j++) ix[x * kx + j] = reflect_index(x - kx / 2 + j, W) * src->sw;
  for (int64_t y = 0; y < H; y++)
    for (int j = 0; j < ky; j++) iy[y * ky + j] = reflect_index(y - ky / 2 + j, H) * W;
  /* along the width into tmp (C,H,W) */
  #pragma omp parallel for schedule(static) ROWS_PARALLEL(rows, W * kx)
  for (int64_t row = 0; row < rows; row++) {
    int64_t c = row / H, y = row % H;
    int64_t sb = c * src->sc + y * src->sh;
    float *t = tmp + row * W;
    if (src->dtype == VTL_U8) {
      const uint8_t *s = (const uint8_t *)src->data + sb;
      for (int64_t x = 0; x < W; x++) {
        const int64_t *o = ix + x * kx;
        float acc = 0;
        for (int j = 0; j < kx; j++) acc += wx[j] * (float)s[o[j]];
        t[x] = acc;
      }
    } else {
      const float *s = (const float *)src->data + sb;
      for (int64_t x = 0; x < W; x++) {
        const int64_t *o = ix + x * kx;
        float acc = 0;
        for (int j = 0; j < kx; j++) acc += wx[j] * s[o[j]];
        t[x] = acc;
      }
    }
  }
  /* along the height into dst */
  #pragma omp parallel for schedule(static) ROWS_PARALLEL(rows, W * ky)
  for (int64_t row = 0; row < rows; row++) {
    int64_t c = row / H, y = row % H;
    int64_t db = c * dst->sc + y * dst->sh;
    const float *plane = tmp + c * H * W;
    const int64_t *o = iy + y * ky;
    for (int64_t x = 0; x < W; x++) {
      float acc = 0;
      for (int j = 0; j < ky; j++) acc += wy[j] * plane[o[j] + x];
      vtl_px_store(dst, db + x * dst->sw, acc, VTL_PX_ROUND);
    }
  }
  free(wx);
  free(tmp);
  free(ix);
  return VTL_OK;
}

// src, dst: (C,H,W), H and W >= 3; interior pixels smoothed by [[1,1,1],[1,5,1],[1,1,1]] / 13
// (u8 rounded), the border copied: adjust_sharpness's "degenerate" image
void vtl_cpu_image_smooth3(const vtl_image_view *src, const vtl_image_view *dst) {
  const float edge = 1.0f / 13.0f, mid = 5.0f / 13.0f;
  int64_t rows = dst->c * dst->h;
  #pragma omp parallel for schedule(static) ROWS_PARALLEL(rows, dst->w * 9)
  for (int64_t row = 0; row < rows; row++) {
    int64_t c = row / dst->h, y = row % dst->h;
    int64_t sb = c * src->sc, db = c * dst->sc + y * dst->sh;
    for (int64_t x = 0; x < dst->w; x++) {
      float v;
      if (y == 0 || x == 0 || y == dst->h - 1 || x == dst->w - 1) {
        v = vtl_px_load(src, sb + y * src->sh + x * src->sw);
      } else {
        v = 0;
        for (int dy = -1; dy <= 1; dy++)
          for (int dx = -1; dx <= 1; dx++)
            v += (dy == 0 && dx == 0 ? mid : edge) * vtl_px_load(src, sb + (y + dy) * src->sh + (x + dx) * src->sw);
      }
      vtl_px_store(dst, db + x * dst->sw, v, VTL_PX_ROUND);
    }
  }
}
