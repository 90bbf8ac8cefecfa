/*
 * Images: decoding and encoding files (stb_image / stb_image_write), and the pixel kernels the
 * transforms run on (resize, crop, flip, to_tensor, normalize).
 *
 * Layouts: an image is a u8 tensor H×W×C (as decoded; C in 1..4) or a float tensor C×H×W
 * (after to_tensor). Every function here takes CPU tensors of any strides and returns a new
 * contiguous tensor of the same layout and dtype, unless its comment says otherwise.
 *
 * Decoding reads the header first and refuses images whose width×height exceeds max_pixels
 * before any pixel memory is allocated. Failures leave a message naming the file and the
 * problem ("image.load: cat.jpg: truncated JPEG (no end-of-image marker)").
 */
#ifndef VTL_IMAGE_H
#define VTL_IMAGE_H
#include "core.h"

#define VTL_IMAGE_MAX_PIXELS_DEFAULT ((int64_t)1 << 28)

typedef enum { VTL_INTERP_NEAREST = 0, VTL_INTERP_BILINEAR, VTL_INTERP_BICUBIC } vtl_interp;

/* Width, height and channel count from the file's header, without decoding. */
vtl_status vtl_image_info(const char *path, int *w, int *h, int *c);

/* Decodes a JPEG/PNG/BMP/GIF(first frame)/TGA/PNM/PSD/HDR file into a u8 H×W×C tensor.
   channels 0 keeps the file's own count; 1..4 converts (grey expanded, alpha dropped or
   added opaque). */
vtl_tensor *vtl_image_load(const char *path, int channels, int64_t max_pixels);

/* Writes a u8 H×W×C (or H×W) tensor, or a float C×H×W tensor of values in [0, 1], as PNG or
   JPEG (chosen by the extension: .png, .jpg/.jpeg); quality (1..100) is for JPEG. Atomic:
   written to <path>.tmp.<pid>, fsync'd, renamed. */
vtl_status vtl_image_save(const char *path, vtl_tensor *t, int quality);

/* Resizes to oh×ow. antialias widens the filter when downscaling (bilinear and bicubic, as
   PyTorch's interpolate(antialias=True)); u8 results are rounded half to even and clamped. */
vtl_tensor *vtl_image_resize(vtl_tensor *img, int64_t oh, int64_t ow, vtl_interp mode, bool antialias);

/* The oh×ow region whose top-left corner is (top, left) (0-based, may be negative or reach past
   the image); pixels outside the image are `fill`. */
vtl_tensor *vtl_image_crop(vtl_tensor *img, int64_t top, int64_t left, int64_t oh, int64_t ow, double fill);

/* Mirrors left-right (horizontal) or top-bottom. */
vtl_tensor *vtl_image_flip(vtl_tensor *img, bool horizontal);

/* u8 H×W×C (or H×W) -> f32 C×H×W divided by 255. */
vtl_tensor *vtl_image_to_tensor(vtl_tensor *img);

/* f32 C×H×W -> u8 H×W×C: each value v becomes clamp(floor(v*255 + 0.5), 0, 255). */
vtl_tensor *vtl_image_to_u8(vtl_tensor *img);

/* (x - mean[c]) / std[c] per channel of a float C×H×W tensor; mean and std have C entries. */
vtl_tensor *vtl_image_normalize(vtl_tensor *img, const double *mean, const double *std, int nc);

/* ---- CPU kernels (kernels/cpu/image.c) over plain pointers ----
   A plane set is described by (C, H, W) and element strides (sc, sh, sw), so one kernel serves
   u8 HWC (sc=1, sh=W*C, sw=C) and float CHW (sc=H*W, sh=W, sw=1). */
typedef struct {
  void *data;
  vtl_dtype dtype; /* VTL_U8 or VTL_F32 */
  int64_t c, h, w;
  int64_t sc, sh, sw;
} vtl_image_view;

vtl_status vtl_cpu_image_resize(const vtl_image_view *src, const vtl_image_view *dst, vtl_interp mode,
                                bool antialias);
void vtl_cpu_image_crop(const vtl_image_view *src, const vtl_image_view *dst, int64_t top, int64_t left,
                        double fill);
void vtl_cpu_image_flip(const vtl_image_view *src, const vtl_image_view *dst, bool horizontal);
/* dst[c][y][x] = (src[c][y][x] * mul / div - mean[c]) / std[c] in float (mean/std NULL: none);
   a u8 dst stores clamp(floor(v + 0.5), 0, 255). */
void vtl_cpu_image_affine(const vtl_image_view *src, const vtl_image_view *dst, float mul, float div,
                          const double *mean, const double *std);

#endif
