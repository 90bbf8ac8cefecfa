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

/* How pad maps positions outside the image: a constant fill, the nearest edge pixel, a mirror
   that does not repeat the edge (reflect: ... 2 1 | 0 1 2 ...) or one that does (symmetric). */
typedef enum { VTL_PAD_CONSTANT = 0, VTL_PAD_EDGE, VTL_PAD_REFLECT, VTL_PAD_SYMMETRIC } vtl_pad_mode;

/* Colour adjustments that blend the image with a target (torchvision's _blend): brightness with
   black, contrast with the grayscale mean, saturation with the grayscale image, sharpness with a
   3×3-smoothed image. */
typedef enum { VTL_ADJUST_BRIGHTNESS = 0, VTL_ADJUST_CONTRAST, VTL_ADJUST_SATURATION, VTL_ADJUST_SHARPNESS } vtl_adjust;

/* Per-pixel maps: bound - x; x & ~(2^(8-bits) - 1) (u8); x >= threshold ? bound - x : x. */
typedef enum { VTL_POINT_INVERT = 0, VTL_POINT_POSTERIZE, VTL_POINT_SOLARIZE } vtl_point_op;

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

/* to_tensor then normalize in one pass (mean, std: nc entries, 1 or one per channel); equal to
   the two steps bit for bit. mean NULL: to_tensor alone. */
vtl_tensor *vtl_image_to_tensor_normalize(vtl_tensor *img, const double *mean, const double *std, int nc);

/* f32 C×H×W -> u8 H×W×C: each value v becomes clamp(floor(v*255 + 0.5), 0, 255). */
vtl_tensor *vtl_image_to_u8(vtl_tensor *img);

/* (x - mean[c]) / std[c] per channel of a float C×H×W tensor; mean and std have C entries. */
vtl_tensor *vtl_image_normalize(vtl_tensor *img, const double *mean, const double *std, int nc);

/* ---- colour and geometry ops (torchvision.transforms.functional on tensors) ----
   They take u8 H×W×C (or H×W) and f32 C×H×W images whose values lie in [0, 255] and [0, 1];
   u8 results are truncated or rounded as torchvision's tensor functions do. The colour ops need
   1 or 3 channels (hue, saturation and grayscale leave a 1-channel image as it is). */

/* Pads by top/left/bottom/right pixels (negative values crop) with the given mode. */
vtl_tensor *vtl_image_pad(vtl_tensor *img, int64_t top, int64_t left, int64_t bottom, int64_t right,
                          vtl_pad_mode mode, double fill);

/* Samples img through the inverse affine matrix m (torchvision's _get_inverse_affine_matrix:
   output pixel -> input pixel, both relative to the image centre) into an oh×ow image, nearest or
   bilinear. fill (nfill 1 or C values) colours the area outside the source, blended by the
   sampled coverage as torchvision does when it is given a fill; NULL: zeros, unblended. */
vtl_tensor *vtl_image_warp(vtl_tensor *img, const double m[6], int64_t oh, int64_t ow, vtl_interp mode,
                           const double *fill, int nfill);

/* brightness/contrast/saturation/sharpness by factor >= 0 (1: unchanged). */
vtl_tensor *vtl_image_adjust(vtl_tensor *img, vtl_adjust what, double factor);

/* Rotates the hue by hue in [-0.5, 0.5] turns (through HSV, as torchvision). */
vtl_tensor *vtl_image_adjust_hue(vtl_tensor *img, double hue);

/* 0.2989 R + 0.587 G + 0.114 B into out_channels (1 or 3) identical channels. */
vtl_tensor *vtl_image_grayscale(vtl_tensor *img, int out_channels);

/* invert, posterize (u8; param = bits 0..8), solarize (param = threshold). */
vtl_tensor *vtl_image_point(vtl_tensor *img, vtl_point_op op, double param);

/* Per-channel stretch of [min, max] to the full range. */
vtl_tensor *vtl_image_autocontrast(vtl_tensor *img);

/* Per-channel histogram equalisation (u8 only). */
vtl_tensor *vtl_image_equalize(vtl_tensor *img);

/* Gaussian blur with odd kernel sizes kx (width) × ky (height) and sigmas sx, sy > 0, reflect
   padding. */
vtl_tensor *vtl_image_gaussian_blur(vtl_tensor *img, int kx, int ky, double sx, double sy);

/* A copy of img with rows top..top+h-1 and columns left..left+w-1 (0-based, inside the image)
   set to values (nvalues 1 or C) or, when noise is not NULL, to noise (f32 C×h×w). */
vtl_tensor *vtl_image_erase(vtl_tensor *img, int64_t top, int64_t left, int64_t h, int64_t w,
                            const double *values, int nvalues, vtl_tensor *noise);

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


/* kernels/cpu/image_color.c */
void vtl_cpu_image_blend(const vtl_image_view *src, const vtl_image_view *other, float scalar, double ratio,
                         const vtl_image_view *dst);
void vtl_cpu_image_grayscale(const vtl_image_view *src, const vtl_image_view *dst);
/* adjust_saturation of a 3-channel u8 image in one pass, bit-identical to grayscale + blend */
void vtl_cpu_image_saturation_u8(const vtl_image_view *src, double ratio, const vtl_image_view *dst);
double vtl_cpu_image_gray_mean(const vtl_image_view *src);
void vtl_cpu_image_hue(const vtl_image_view *src, const vtl_image_view *dst, double hue);
void vtl_cpu_image_point(const vtl_image_view *src, const vtl_image_view *dst, vtl_point_op op, double param);
void vtl_cpu_image_autocontrast(const vtl_image_view *src, const vtl_image_view *dst);
void vtl_cpu_image_equalize(const vtl_image_view *src, const vtl_image_view *dst);
vtl_status vtl_cpu_image_gaussian_blur(const vtl_image_view *src, const vtl_image_view *dst, int kx, int ky,
                                       double sx, double sy);
void vtl_cpu_image_smooth3(const vtl_image_view *src, const vtl_image_view *dst);

/* kernels/cpu/image_warp.c */
void vtl_cpu_image_warp(const vtl_image_view *src, const vtl_image_view *dst, const double m[6], vtl_interp mode,
                        const float *fill);
void vtl_cpu_image_pad(const vtl_image_view *src, const vtl_image_view *dst, int64_t top, int64_t left,
                       vtl_pad_mode mode, double fill);
void vtl_cpu_image_erase(const vtl_image_view *img, int64_t top, int64_t left, int64_t h, int64_t w,
                         const float *values, int nvalues, const vtl_image_view *noise);

#endif
