/* Pixel access shared by the image kernels: one u8 or f32 element of a vtl_image_view, and the
   two ways torchvision's tensor ops turn a float result back into u8: `.to(torch.uint8)`
   (truncation, after the op's own clamp) and `torch.round` then cast (half to even). */
#ifndef VTL_CPU_IMAGE_PX_H
#define VTL_CPU_IMAGE_PX_H
#include <math.h>
#include <stdint.h>
#include "image.h"

typedef enum { VTL_PX_TRUNC = 0, VTL_PX_ROUND } vtl_px_rounding;

static inline float vtl_px_load(const vtl_image_view *v, int64_t off) {
  return v->dtype == VTL_U8 ? (float)((const uint8_t *)v->data)[off] : ((const float *)v->data)[off];
}

/* f32: stored as is. u8: truncated or rounded half to even, then clamped to 0..255 (NaN -> 0). */
static inline void vtl_px_store(const vtl_image_view *v, int64_t off, float x, vtl_px_rounding rounding) {
  if (v->dtype == VTL_U8) {
    float r = rounding == VTL_PX_ROUND ? nearbyintf(x) : truncf(x);
    ((uint8_t *)v->data)[off] = (uint8_t)(r >= 0 ? (r <= 255 ? r : 255) : 0);
  } else {
    ((float *)v->data)[off] = x;
  }
}

/* Work (pixels × channels × taps) above which a kernel splits its rows over the OpenMP pool. */
#define VTL_IMAGE_PAR_WORK 65536

#endif
