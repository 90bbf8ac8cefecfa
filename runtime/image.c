/*
 * Image files and image ops.
 *
 * Decoding: the whole file is read, its header parsed (stbi_info) and its size checked
 * against the caller's pixel limit before anything is decoded, and a JPEG must reach its
 * end-of-image marker (decoders fill a truncated JPEG with grey instead of failing). JPEGs are
 * decoded by libjpeg (as PIL does), every other format by stb_image. Encoding:
 * stb_image_write into <path>.tmp.<pid>, fsync, rename.
 *
 * Image ops check layout and dtype (u8 H×W×C, f32 C×H×W, CPU) and run kernels/cpu/image.c.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <setjmp.h>
#include <jpeglib.h>
#include <stb/stb_image.h>
#include <stb/stb_image_write.h>
#include "image.h"

#define FORMATS "JPEG, PNG, BMP, GIF, TGA, PNM, PSD or HDR"

/* ---- reading ---- */

/* The whole file in a malloc'd buffer, or NULL with the error set (missing, unreadable,
   a directory, empty, larger than stb can take). */
static unsigned char *read_file(const char *op, const char *path, size_t *n) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    vtl_error_set(VTL_ERR_IO, "%s: %s: cannot open (%s)", op, path, strerror(errno));
    return NULL;
  }
  struct stat sb;
  if (fstat(fd, &sb) != 0) {
    vtl_error_set(VTL_ERR_IO, "%s: %s: cannot stat (%s)", op, path, strerror(errno));
    close(fd);
    return NULL;
  }
  const char *bad = S_ISDIR(sb.st_mode) ? "is a directory, not an image file"
                    : !S_ISREG(sb.st_mode) ? "is not a regular file"
                    : sb.st_size == 0 ? "empty file (0 bytes), not an image"
                    : sb.st_size > INT_MAX ? "file too large for the image decoder (over 2 GiB)" : NULL;
  if (bad) {
    vtl_error_set(VTL_ERR_FORMAT, "%s: %s: %s", op, path, bad);
    close(fd);
    return NULL;
  }
  size_t size = (size_t)sb.st_size, got = 0;
  unsigned char *buf = malloc(size);
  if (!buf) {
    vtl_error_set(VTL_ERR_OOM, "%s: %s: out of memory reading %zu bytes", op, path, size);
    close(fd);
    return NULL;
  }
  while (got < size) {
    ssize_t r = read(fd, buf + got, size - got);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      vtl_error_set(VTL_ERR_IO, "%s: %s: read failed (%s)", op, path, r < 0 ? strerror(errno) : "file shrank");
      free(buf);
      close(fd);
      return NULL;
    }
    got += (size_t)r;
  }
  close(fd);
  *n = size;
  return buf;
}

static bool is_jpeg(const unsigned char *b, size_t n) { return n >= 3 && b[0] == 0xFF && b[1] == 0xD8 && b[2] == 0xFF; }

/* 1 when a JPEG's segments reach a start-of-scan and an end-of-image marker follows it. */
static bool jpeg_complete(const unsigned char *b, size_t n) {
  size_t i = 2;
  while (i + 1 < n) {
    if (b[i] != 0xFF) return false;
    unsigned m = b[i + 1];
    if (m == 0xFF) { i++; continue; }                     /* fill byte */
    if (m == 0xD9) return false;                          /* EOI before any scan */
    if (m == 0x01 || (m >= 0xD0 && m <= 0xD7)) { i += 2; continue; }
    if (i + 3 >= n) return false;
    size_t len = (size_t)b[i + 2] << 8 | b[i + 3];
    if (m == 0xDA) {
      for (size_t j = i + 2 + len; j + 1 < n; j++)
        if (b[j] == 0xFF && b[j + 1] == 0xD9) return true;
      return false;
    }
    i += 2 + len;
  }
  return false;
}

static const char *kind_of(const unsigned char *b, size_t n) {
  if (is_jpeg(b, n)) return "JPEG";
  if (n >= 8 && memcmp(b, "\x89PNG\r\n\x1a\n", 8) == 0) return "PNG";
  if (n >= 6 && (memcmp(b, "GIF87a", 6) == 0 || memcmp(b, "GIF89a", 6) == 0)) return "GIF";
  if (n >= 2 && b[0] == 'B' && b[1] == 'M') return "BMP";
  return NULL;
}

static uint32_t be32(const unsigned char *p) { return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]; }
static uint32_t le32(const unsigned char *p) { return (uint32_t)p[3] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[1] << 8 | p[0]; }

/* The size a PNG, GIF, BMP or JPEG header claims, read without stb (which refuses very large
   sizes with a vague message); 0 when unknown. */
static bool claimed_size(const unsigned char *b, size_t n, int64_t *w, int64_t *h) {
  const char *kind = kind_of(b, n);
  if (!kind) return false;
  if (kind[0] == 'P' && n >= 24 && memcmp(b + 12, "IHDR", 4) == 0) { *w = be32(b + 16); *h = be32(b + 20); return true; }
  if (kind[0] == 'G' && n >= 10) { *w = b[6] | b[7] << 8; *h = b[8] | b[9] << 8; return true; }
  if (kind[0] == 'B' && n >= 26) {
    int32_t bw = (int32_t)le32(b + 18), bh = (int32_t)le32(b + 22);
    *w = bw < 0 ? -(int64_t)bw : bw;
    *h = bh < 0 ? -(int64_t)bh : bh;
    return true;
  }
  if (kind[0] == 'J') {
    size_t i = 2;
    while (i + 3 < n) {
      if (b[i] != 0xFF) return false;
      unsigned m = b[i + 1];
      if (m == 0xFF) { i++; continue; }
      if (m == 0x01 || (m >= 0xD0 && m <= 0xD7)) { i += 2; continue; }
      if (m == 0xDA || m == 0xD9) return false;
      size_t len = (size_t)b[i + 2] << 8 | b[i + 3];
      bool sof = m >= 0xC0 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC;
      if (sof && i + 8 < n) { *h = b[i + 5] << 8 | b[i + 6]; *w = b[i + 7] << 8 | b[i + 8]; return true; }
      i += 2 + len;
    }
  }
  return false;
}

static vtl_status limit_error(const char *op, const char *path, int64_t w, int64_t h, int64_t max_pixels) {
  return vtl_error_set(VTL_ERR_FORMAT, "%s: %s: image of %lld×%lld pixels exceeds the limit of %lld pixels "
                       "(vtl.image.set_limits{max_pixels=...})", op, path, (long long)w, (long long)h, (long long)max_pixels);
}

static vtl_status header_error(const char *op, const char *path, const unsigned char *b, size_t n) {
  const char *kind = kind_of(b, n);
  const char *why = stbi_failure_reason();
  if (kind) return vtl_error_set(VTL_ERR_FORMAT, "%s: %s: corrupt %s header (%s)", op, path, kind, why ? why : "unknown");
  return vtl_error_set(VTL_ERR_FORMAT, "%s: %s: not a recognised image file (expected " FORMATS "; %s)", op, path,
                       why ? why : "unknown format");
}

vtl_status vtl_image_info(const char *path, int *w, int *h, int *c) {
  size_t n;
  unsigned char *buf = read_file("image.info", path, &n);
  if (!buf) return vtl_error_status();
  int ok = stbi_info_from_memory(buf, (int)n, w, h, c);
  int64_t cw, ch;
  if (!ok && claimed_size(buf, n, &cw, &ch) && cw <= INT_MAX && ch <= INT_MAX) {
    *w = (int)cw;
    *h = (int)ch;
    *c = 0; /* unknown: stb refused the header */
    ok = 1;
  }
  vtl_status st = ok ? VTL_OK : header_error("image.info", path, buf, n);
  free(buf);
  return st;
}

/* ---- JPEG through libjpeg(-turbo) ----
   JPEG files with 1 or 3 components are decoded by libjpeg with its defaults (integer IDCT,
   smooth chroma upsampling) — the decoder PIL uses, so the pixels equal PIL's — and about 1.7×
   faster than stb_image on photos. Other JPEGs (CMYK, YCCK) go to stb. */

typedef struct {
  struct jpeg_error_mgr pub;
  jmp_buf jump;
  char msg[JMSG_LENGTH_MAX];
} jpeg_err;

static void jpeg_on_error(j_common_ptr ci) {
  jpeg_err *e = (jpeg_err *)ci->err;
  e->pub.format_message(ci, e->msg);
  longjmp(e->jump, 1);
}

static void jpeg_on_message(j_common_ptr ci, int level) { (void)ci; (void)level; } /* warnings: decode on, as PIL */

/* stb_image's conversion of a 1- or 3-channel pixel to `oc` channels (grey from RGB as
   (77 R + 150 G + 29 B) >> 8, opaque alpha added) */
static void convert_channels(const uint8_t *src, int ic, uint8_t *dst, int oc, size_t npx) {
  for (size_t i = 0; i < npx; i++, src += ic, dst += oc) {
    uint8_t r = src[0], g = ic == 3 ? src[1] : r, b = ic == 3 ? src[2] : r;
    uint8_t y = ic == 3 ? (uint8_t)((r * 77 + g * 150 + b * 29) >> 8) : r;
    switch (oc) {
    case 1: dst[0] = y; break;
    case 2: dst[0] = y; dst[1] = 255; break;
    case 3: dst[0] = r; dst[1] = g; dst[2] = b; break;
    default: dst[0] = r; dst[1] = g; dst[2] = b; dst[3] = 255; break;
    }
  }
}

/* Decodes a complete JPEG of w×h pixels into a u8 H×W×C tensor (channels 0: the file's 1 or 3).
   *handled is false (and nothing is set) when the file is not one libjpeg should take here. */
static vtl_tensor *jpeg_decode(const char *op, const char *path, const unsigned char *buf, size_t n, int w, int h,
                               int channels, bool *handled) {
  struct jpeg_decompress_struct ci;
  jpeg_err err;
  vtl_tensor *volatile t = NULL;
  uint8_t *volatile tmp = NULL;
  *handled = true;
  ci.err = jpeg_std_error(&err.pub);
  err.pub.error_exit = jpeg_on_error;
  err.pub.emit_message = jpeg_on_message;
  if (setjmp(err.jump)) {
    jpeg_destroy_decompress(&ci);
    free(tmp);
    if (t) vtl_tensor_release(t);
    vtl_error_set(VTL_ERR_FORMAT, "%s: %s: corrupt or truncated JPEG data (%s)", op, path, err.msg);
    return NULL;
  }
  jpeg_create_decompress(&ci);
  jpeg_mem_src(&ci, buf, (unsigned long)n);
  jpeg_read_header(&ci, TRUE);
  int ic = ci.num_components;
  if ((ic != 1 && ic != 3) || (ic == 3 && ci.jpeg_color_space != JCS_YCbCr && ci.jpeg_color_space != JCS_RGB)) {
    jpeg_destroy_decompress(&ci);
    *handled = false;
    return NULL;
  }
  ci.out_color_space = ic == 1 ? JCS_GRAYSCALE : JCS_RGB;
  jpeg_start_decompress(&ci);
  if ((int)ci.output_width != w || (int)ci.output_height != h || ci.output_components != ic) {
    vtl_error_set(VTL_ERR_FORMAT, "%s: %s: decoded size %u×%u differs from the header's %d×%d", op, path,
                  ci.output_width, ci.output_height, w, h);
    jpeg_destroy_decompress(&ci);
    return NULL;
  }
  int oc = channels ? channels : ic;
  int64_t shape[3] = {h, w, oc};
  t = vtl_tensor_empty(shape, 3, VTL_U8, (vtl_device){VTL_CPU, 0});
  if (!t) {
    jpeg_destroy_decompress(&ci);
    return NULL;
  }
  uint8_t *out = vtl_tensor_data(t);
  if (oc != ic) {
    tmp = malloc((size_t)w * (size_t)h * (size_t)ic);
    if (!tmp) {
      vtl_error_set(VTL_ERR_OOM, "%s: %s: out of memory decoding %d×%d pixels", op, path, w, h);
      jpeg_destroy_decompress(&ci);
      vtl_tensor_release(t);
      return NULL;
    }
  }
  uint8_t *px = oc != ic ? tmp : out;
  size_t stride = (size_t)w * (size_t)ic;
  while (ci.output_scanline < ci.output_height) {
    JSAMPROW rows[8];
    JDIMENSION k = ci.output_height - ci.output_scanline;
    if (k > 8) k = 8;
    for (JDIMENSION i = 0; i < k; i++) rows[i] = px + (size_t)(ci.output_scanline + i) * stride;
    jpeg_read_scanlines(&ci, rows, k);
  }
  jpeg_finish_decompress(&ci);
  jpeg_destroy_decompress(&ci);
  if (tmp) {
    convert_channels(tmp, ic, out, oc, (size_t)w * (size_t)h);
    free(tmp);
  }
  return t;
}

vtl_tensor *vtl_image_load(const char *path, int channels, int64_t max_pixels) {
  const char *op = "image.load";
  if (channels < 0 || channels > 4) {
    vtl_error_set(VTL_ERR_ARG, "%s: channels must be 0 (as in the file) or 1..4, got %d", op, channels);
    return NULL;
  }
  size_t n;
  unsigned char *buf = read_file(op, path, &n);
  if (!buf) return NULL;
  int64_t cw, ch;
  if (claimed_size(buf, n, &cw, &ch) && cw * ch > max_pixels) {
    limit_error(op, path, cw, ch, max_pixels);
    free(buf);
    return NULL;
  }
  int w, h, c;
  if (!stbi_info_from_memory(buf, (int)n, &w, &h, &c)) {
    header_error(op, path, buf, n);
    free(buf);
    return NULL;
  }
  if (w <= 0 || h <= 0 || (int64_t)w * h > max_pixels) {
    limit_error(op, path, w, h, max_pixels);
    free(buf);
    return NULL;
  }
  if (is_jpeg(buf, n) && !jpeg_complete(buf, n)) {
    vtl_error_set(VTL_ERR_FORMAT, "%s: %s: truncated JPEG (no end-of-image marker after the scan data)", op, path);
    free(buf);
    return NULL;
  }
  if (is_jpeg(buf, n)) {
    bool handled;
    vtl_tensor *t = jpeg_decode(op, path, buf, n, w, h, channels, &handled);
    if (handled) {
      free(buf);
      return t;
    }
  }
  int dw, dh, dc;
  unsigned char *px = stbi_load_from_memory(buf, (int)n, &dw, &dh, &dc, channels);
  if (!px) {
    const char *kind = kind_of(buf, n);
    const char *why = stbi_failure_reason();
    vtl_error_set(VTL_ERR_FORMAT, "%s: %s: corrupt or truncated %s data (%s)", op, path, kind ? kind : "image",
                  why ? why : "decoder failed");
    free(buf);
    return NULL;
  }
  free(buf);
  int oc = channels ? channels : dc;
  int64_t shape[3] = {dh, dw, oc};
  vtl_tensor *t = NULL;
  if (dw != w || dh != h) {
    vtl_error_set(VTL_ERR_FORMAT, "%s: %s: decoded size %d×%d differs from the header's %d×%d", op, path, dw, dh, w, h);
  } else {
    t = vtl_tensor_empty(shape, 3, VTL_U8, (vtl_device){VTL_CPU, 0});
    if (t) memcpy(vtl_tensor_data(t), px, (size_t)dw * (size_t)dh * (size_t)oc);
  }
  stbi_image_free(px);
  return t;
}

/* ---- views of image tensors ---- */

/* A kernel view of img: u8 H×W×C or H×W (C in 1..4), or f32 C×H×W or H×W. */
static vtl_status image_view(const char *op, vtl_tensor *img, vtl_image_view *v) {
  char s[128];
  if (vtl_tensor_device(img).type != VTL_CPU)
    return vtl_error_set(VTL_ERR_DEVICE, "%s: image tensors must be on the CPU", op);
  if (img->dtype != VTL_U8 && img->dtype != VTL_F32)
    return vtl_error_set(VTL_ERR_ARG, "%s: image must be u8 (H×W×C) or f32 (C×H×W), got %s", op,
                         vtl_dtype_name(img->dtype));
  vtl_shape_format(img->shape, img->ndim, s, sizeof s);
  if (img->ndim != 2 && img->ndim != 3)
    return vtl_error_set(VTL_ERR_ARG, "%s: image must be 2-D or 3-D (%s), got shape %s", op,
                         img->dtype == VTL_U8 ? "H×W×C" : "C×H×W", s);
  v->data = vtl_tensor_data(img);
  v->dtype = img->dtype;
  if (img->ndim == 2) {
    v->c = 1; v->h = img->shape[0]; v->w = img->shape[1];
    v->sc = 0; v->sh = img->strides[0]; v->sw = img->strides[1];
  } else if (img->dtype == VTL_U8) {
    v->h = img->shape[0]; v->w = img->shape[1]; v->c = img->shape[2];
    v->sh = img->strides[0]; v->sw = img->strides[1]; v->sc = img->strides[2];
    if (v->c < 1 || v->c > 4)
      return vtl_error_set(VTL_ERR_ARG, "%s: u8 image must be H×W×C with 1 to 4 channels, got shape %s", op, s);
  } else {
    v->c = img->shape[0]; v->h = img->shape[1]; v->w = img->shape[2];
    v->sc = img->strides[0]; v->sh = img->strides[1]; v->sw = img->strides[2];
  }
  return VTL_OK;
}

/* A new contiguous tensor of img's layout and dtype (or `dt`, laid out for it) with c×h×w. */
static vtl_tensor *image_new(vtl_dtype dt, int ndim, int64_t c, int64_t h, int64_t w, vtl_image_view *v) {
  int64_t shape[3];
  if (ndim == 2) { shape[0] = h; shape[1] = w; }
  else if (dt == VTL_U8) { shape[0] = h; shape[1] = w; shape[2] = c; }
  else { shape[0] = c; shape[1] = h; shape[2] = w; }
  vtl_tensor *t = vtl_tensor_empty(shape, ndim, dt, (vtl_device){VTL_CPU, 0});
  if (!t) return NULL;
  v->data = vtl_tensor_data(t);
  v->dtype = dt;
  v->c = c; v->h = h; v->w = w;
  if (ndim == 2) { v->sc = 0; v->sh = w; v->sw = 1; }
  else if (dt == VTL_U8) { v->sc = 1; v->sh = w * c; v->sw = c; }
  else { v->sc = h * w; v->sh = w; v->sw = 1; }
  return t;
}

vtl_tensor *vtl_image_resize(vtl_tensor *img, int64_t oh, int64_t ow, vtl_interp mode, bool antialias) {
  vtl_image_view s, d;
  if (image_view("resize", img, &s) != VTL_OK) return NULL;
  if (oh < 1 || ow < 1) {
    vtl_error_set(VTL_ERR_ARG, "resize: output size must be at least 1×1, got %lld×%lld", (long long)oh, (long long)ow);
    return NULL;
  }
  if (s.h < 1 || s.w < 1) {
    vtl_error_set(VTL_ERR_ARG, "resize: cannot resize an empty image (%lld×%lld)", (long long)s.h, (long long)s.w);
    return NULL;
  }
  vtl_tensor *t = image_new(img->dtype, img->ndim, s.c, oh, ow, &d);
  if (!t) return NULL;
  if (vtl_cpu_image_resize(&s, &d, mode, antialias) != VTL_OK) {
    vtl_tensor_release(t);
    return NULL;
  }
  return t;
}

vtl_tensor *vtl_image_crop(vtl_tensor *img, int64_t top, int64_t left, int64_t oh, int64_t ow, double fill) {
  vtl_image_view s, d;
  if (image_view("crop", img, &s) != VTL_OK) return NULL;
  if (oh < 0 || ow < 0) {
    vtl_error_set(VTL_ERR_ARG, "crop: size must be non-negative, got %lld×%lld", (long long)oh, (long long)ow);
    return NULL;
  }
  vtl_tensor *t = image_new(img->dtype, img->ndim, s.c, oh, ow, &d);
  if (!t) return NULL;
  vtl_cpu_image_crop(&s, &d, top, left, fill);
  return t;
}

vtl_tensor *vtl_image_flip(vtl_tensor *img, bool horizontal) {
  vtl_image_view s, d;
  if (image_view(horizontal ? "hflip" : "vflip", img, &s) != VTL_OK) return NULL;
  vtl_tensor *t = image_new(img->dtype, img->ndim, s.c, s.h, s.w, &d);
  if (!t) return NULL;
  vtl_cpu_image_flip(&s, &d, horizontal);
  return t;
}

/* mean and std (nc entries, 1 or one per channel) spread over the c channels of an image into
   m and sd (64 entries); checks std != 0 */
static vtl_status normalize_params(const char *op, int64_t c, const double *mean, const double *std, int nc,
                                   double *m, double *sd) {
  if (nc != c && nc != 1)
    return vtl_error_set(VTL_ERR_ARG, "%s: mean and std have %d entries for an image of %lld channels", op, nc, (long long)c);
  for (int i = 0; i < nc; i++)
    if (std[i] == 0) return vtl_error_set(VTL_ERR_ARG, "%s: std[%d] is 0", op, i + 1);
  if (c > 64) return vtl_error_set(VTL_ERR_ARG, "%s: at most 64 channels, got %lld", op, (long long)c);
  for (int64_t i = 0; i < c; i++) { m[i] = mean[nc == 1 ? 0 : i]; sd[i] = std[nc == 1 ? 0 : i]; }
  return VTL_OK;
}

vtl_tensor *vtl_image_to_tensor(vtl_tensor *img) { return vtl_image_to_tensor_normalize(img, NULL, NULL, 0); }

vtl_tensor *vtl_image_to_tensor_normalize(vtl_tensor *img, const double *mean, const double *std, int nc) {
  vtl_image_view s, d;
  if (image_view("to_tensor", img, &s) != VTL_OK) return NULL;
  if (img->dtype != VTL_U8) {
    vtl_error_set(VTL_ERR_ARG, "to_tensor: expected a u8 H×W×C image, got %s", vtl_dtype_name(img->dtype));
    return NULL;
  }
  double m[64], sd[64];
  if (mean && normalize_params("to_tensor", s.c, mean, std, nc, m, sd) != VTL_OK) return NULL;
  vtl_tensor *t = image_new(VTL_F32, 3, s.c, s.h, s.w, &d);
  if (!t) return NULL;
  vtl_cpu_image_affine(&s, &d, 1.0f, 255.0f, mean ? m : NULL, mean ? sd : NULL);
  return t;
}

vtl_tensor *vtl_image_to_u8(vtl_tensor *img) {
  vtl_image_view s, d;
  if (image_view("to_u8", img, &s) != VTL_OK) return NULL;
  if (img->dtype != VTL_F32) {
    vtl_error_set(VTL_ERR_ARG, "to_u8: expected an f32 C×H×W image, got %s", vtl_dtype_name(img->dtype));
    return NULL;
  }
  if (s.c < 1 || s.c > 4) {
    vtl_error_set(VTL_ERR_ARG, "to_u8: image must have 1 to 4 channels, got %lld", (long long)s.c);
    return NULL;
  }
  vtl_tensor *t = image_new(VTL_U8, 3, s.c, s.h, s.w, &d);
  if (!t) return NULL;
  vtl_cpu_image_affine(&s, &d, 255.0f, 1.0f, NULL, NULL);
  return t;
}

vtl_tensor *vtl_image_normalize(vtl_tensor *img, const double *mean, const double *std, int nc) {
  vtl_image_view s, d;
  if (image_view("normalize", img, &s) != VTL_OK) return NULL;
  if (img->dtype != VTL_F32 || img->ndim != 3) {
    vtl_error_set(VTL_ERR_ARG, "normalize: expected an f32 C×H×W tensor (use to_tensor first), got a %d-D %s tensor",
                  img->ndim, vtl_dtype_name(img->dtype));
    return NULL;
  }
  double m[64], sd[64];
  if (normalize_params("normalize", s.c, mean, std, nc, m, sd) != VTL_OK) return NULL;
  vtl_tensor *t = image_new(VTL_F32, 3, s.c, s.h, s.w, &d);
  if (!t) return NULL;
  vtl_cpu_image_affine(&s, &d, 1.0f, 1.0f, m, sd);
  return t;
}

/* ---- colour and geometry ops ---- */

/* A view of an image for the colour ops: 1 or 3 channels. */
static vtl_status color_view(const char *op, vtl_tensor *img, vtl_image_view *v) {
  if (image_view(op, img, v) != VTL_OK) return vtl_error_status();
  if (v->c != 1 && v->c != 3)
    return vtl_error_set(VTL_ERR_ARG, "%s: image must have 1 or 3 channels, got %lld", op, (long long)v->c);
  return VTL_OK;
}

/* A new image of img's layout, dtype and size, with its view in d. */
static vtl_tensor *image_like(vtl_tensor *img, const vtl_image_view *s, vtl_image_view *d) {
  return image_new(img->dtype, img->ndim, s->c, s->h, s->w, d);
}

/* A contiguous copy of img (the colour ops' result when they leave an image unchanged). */
static vtl_tensor *image_copy(vtl_tensor *img, const vtl_image_view *s) {
  vtl_image_view d;
  vtl_tensor *t = image_like(img, s, &d);
  if (t) vtl_cpu_image_crop(s, &d, 0, 0, 0);
  return t;
}

#define IMAGE_MAX_SIDE ((int64_t)1 << 24)

vtl_tensor *vtl_image_pad(vtl_tensor *img, int64_t top, int64_t left, int64_t bottom, int64_t right,
                          vtl_pad_mode mode, double fill) {
  vtl_image_view s, d;
  if (image_view("pad", img, &s) != VTL_OK) return NULL;
  if (top < -IMAGE_MAX_SIDE || top > IMAGE_MAX_SIDE || left < -IMAGE_MAX_SIDE || left > IMAGE_MAX_SIDE ||
      bottom < -IMAGE_MAX_SIDE || bottom > IMAGE_MAX_SIDE || right < -IMAGE_MAX_SIDE || right > IMAGE_MAX_SIDE) {
    vtl_error_set(VTL_ERR_ARG, "pad: padding of more than %lld pixels", (long long)IMAGE_MAX_SIDE);
    return NULL;
  }
  int64_t oh = s.h + top + bottom, ow = s.w + left + right;
  if (oh < 1 || ow < 1) {
    vtl_error_set(VTL_ERR_ARG, "pad: padding {top %lld, left %lld, bottom %lld, right %lld} leaves an empty image from %lld×%lld",
                  (long long)top, (long long)left, (long long)bottom, (long long)right, (long long)s.h, (long long)s.w);
    return NULL;
  }
  if (mode != VTL_PAD_CONSTANT && (s.h < 1 || s.w < 1)) {
    vtl_error_set(VTL_ERR_ARG, "pad: cannot pad an empty image by mirroring or repeating its edge");
    return NULL;
  }
  vtl_tensor *t = image_new(img->dtype, img->ndim, s.c, oh, ow, &d);
  if (!t) return NULL;
  vtl_cpu_image_pad(&s, &d, top, left, mode, fill);
  return t;
}

vtl_tensor *vtl_image_warp(vtl_tensor *img, const double m[6], int64_t oh, int64_t ow, vtl_interp mode,
                           const double *fill, int nfill) {
  vtl_image_view s, d;
  if (image_view("warp", img, &s) != VTL_OK) return NULL;
  if (mode != VTL_INTERP_NEAREST && mode != VTL_INTERP_BILINEAR) {
    vtl_error_set(VTL_ERR_ARG, "warp: interpolation must be nearest or bilinear");
    return NULL;
  }
  if (oh < 1 || ow < 1 || oh > IMAGE_MAX_SIDE || ow > IMAGE_MAX_SIDE) {
    vtl_error_set(VTL_ERR_ARG, "warp: output size must be 1..%lld per side, got %lld×%lld", (long long)IMAGE_MAX_SIDE,
                  (long long)oh, (long long)ow);
    return NULL;
  }
  if (s.h < 1 || s.w < 1) {
    vtl_error_set(VTL_ERR_ARG, "warp: cannot warp an empty image (%lld×%lld)", (long long)s.h, (long long)s.w);
    return NULL;
  }
  if (fill && nfill != 1 && nfill != s.c) {
    vtl_error_set(VTL_ERR_ARG, "warp: fill has %d values for an image of %lld channels", nfill, (long long)s.c);
    return NULL;
  }
  if (s.c > 64) {
    vtl_error_set(VTL_ERR_ARG, "warp: at most 64 channels, got %lld", (long long)s.c);
    return NULL;
  }
  float f[64];
  if (fill)
    for (int64_t c = 0; c < s.c; c++) f[c] = (float)fill[nfill == 1 ? 0 : c];
  vtl_tensor *t = image_new(img->dtype, img->ndim, s.c, oh, ow, &d);
  if (!t) return NULL;
  vtl_cpu_image_warp(&s, &d, m, mode, fill ? f : NULL);
  return t;
}

vtl_tensor *vtl_image_adjust(vtl_tensor *img, vtl_adjust what, double factor) {
  static const char *const names[] = {"adjust_brightness", "adjust_contrast", "adjust_saturation", "adjust_sharpness"};
  const char *op = names[what];
  vtl_image_view s, d, o;
  if (color_view(op, img, &s) != VTL_OK) return NULL;
  if (!(factor >= 0) || !isfinite(factor)) {
    vtl_error_set(VTL_ERR_ARG, "%s: factor must be a finite number >= 0, got %g", op, factor);
    return NULL;
  }
  if ((what == VTL_ADJUST_SATURATION && s.c == 1) || (what == VTL_ADJUST_SHARPNESS && (s.h <= 2 || s.w <= 2)))
    return image_copy(img, &s);
  vtl_tensor *t = image_like(img, &s, &d);
  if (!t) return NULL;
  switch (what) {
  case VTL_ADJUST_BRIGHTNESS: vtl_cpu_image_blend(&s, NULL, 0.0f, factor, &d); break;
  case VTL_ADJUST_CONTRAST: vtl_cpu_image_blend(&s, NULL, (float)vtl_cpu_image_gray_mean(&s), factor, &d); break;
  case VTL_ADJUST_SATURATION:
    if (img->dtype == VTL_U8) { /* 3 channels here: 1 returned a copy above */
      vtl_cpu_image_saturation_u8(&s, factor, &d);
      break;
    }
    /* fall through */
  case VTL_ADJUST_SHARPNESS: {
    bool sat = what == VTL_ADJUST_SATURATION;
    vtl_tensor *other = sat ? image_new(img->dtype, 2, 1, s.h, s.w, &o) : image_like(img, &s, &o);
    if (!other) {
      vtl_tensor_release(t);
      return NULL;
    }
    if (sat) vtl_cpu_image_grayscale(&s, &o);
    else vtl_cpu_image_smooth3(&s, &o);
    vtl_cpu_image_blend(&s, &o, 0.0f, factor, &d);
    vtl_tensor_release(other);
    break;
  }
  }
  return t;
}

vtl_tensor *vtl_image_adjust_hue(vtl_tensor *img, double hue) {
  vtl_image_view s, d;
  if (color_view("adjust_hue", img, &s) != VTL_OK) return NULL;
  if (!(hue >= -0.5 && hue <= 0.5)) {
    vtl_error_set(VTL_ERR_ARG, "adjust_hue: hue factor must be in [-0.5, 0.5], got %g", hue);
    return NULL;
  }
  if (s.c == 1) return image_copy(img, &s);
  vtl_tensor *t = image_like(img, &s, &d);
  if (t) vtl_cpu_image_hue(&s, &d, hue);
  return t;
}

vtl_tensor *vtl_image_grayscale(vtl_tensor *img, int out_channels) {
  vtl_image_view s, d;
  if (color_view("rgb_to_grayscale", img, &s) != VTL_OK) return NULL;
  if (out_channels != 1 && out_channels != 3) {
    vtl_error_set(VTL_ERR_ARG, "rgb_to_grayscale: output channels must be 1 or 3, got %d", out_channels);
    return NULL;
  }
  int ndim = img->ndim == 2 && out_channels == 1 ? 2 : 3;
  vtl_tensor *t = image_new(img->dtype, ndim, out_channels, s.h, s.w, &d);
  if (!t) return NULL;
  if (s.c == 3) {
    vtl_cpu_image_grayscale(&s, &d);
  } else {
    vtl_image_view one = d;
    one.c = 1;
    for (int c = 0; c < out_channels; c++) {
      one.data = (char *)d.data + (size_t)(c * d.sc) * vtl_dtype_size(d.dtype);
      vtl_cpu_image_crop(&s, &one, 0, 0, 0);
    }
  }
  return t;
}

vtl_tensor *vtl_image_point(vtl_tensor *img, vtl_point_op op, double param) {
  static const char *const names[] = {"invert", "posterize", "solarize"};
  const char *fn = names[op];
  vtl_image_view s, d;
  if (color_view(fn, img, &s) != VTL_OK) return NULL;
  if (op == VTL_POINT_POSTERIZE) {
    if (img->dtype != VTL_U8) {
      vtl_error_set(VTL_ERR_ARG, "posterize: expected a u8 image, got %s", vtl_dtype_name(img->dtype));
      return NULL;
    }
    if (!(param >= 0 && param <= 8) || param != floor(param)) {
      vtl_error_set(VTL_ERR_ARG, "posterize: bits must be an integer in 0..8, got %g", param);
      return NULL;
    }
  }
  if (op == VTL_POINT_SOLARIZE) {
    double bound = img->dtype == VTL_U8 ? 255 : 1;
    if (!(param <= bound) || isnan(param)) {
      vtl_error_set(VTL_ERR_ARG, "solarize: threshold %g is above the image's maximum value %g", param, bound);
      return NULL;
    }
  }
  vtl_tensor *t = image_like(img, &s, &d);
  if (t) vtl_cpu_image_point(&s, &d, op, param);
  return t;
}

vtl_tensor *vtl_image_autocontrast(vtl_tensor *img) {
  vtl_image_view s, d;
  if (color_view("autocontrast", img, &s) != VTL_OK) return NULL;
  vtl_tensor *t = image_like(img, &s, &d);
  if (t) vtl_cpu_image_autocontrast(&s, &d);
  return t;
}

vtl_tensor *vtl_image_equalize(vtl_tensor *img) {
  vtl_image_view s, d;
  if (color_view("equalize", img, &s) != VTL_OK) return NULL;
  if (img->dtype != VTL_U8) {
    vtl_error_set(VTL_ERR_ARG, "equalize: expected a u8 image, got %s", vtl_dtype_name(img->dtype));
    return NULL;
  }
  vtl_tensor *t = image_like(img, &s, &d);
  if (t) vtl_cpu_image_equalize(&s, &d);
  return t;
}

vtl_tensor *vtl_image_gaussian_blur(vtl_tensor *img, int kx, int ky, double sx, double sy) {
  vtl_image_view s, d;
  if (image_view("gaussian_blur", img, &s) != VTL_OK) return NULL;
  if (kx < 1 || ky < 1 || kx % 2 == 0 || ky % 2 == 0 || kx > 4095 || ky > 4095) {
    vtl_error_set(VTL_ERR_ARG, "gaussian_blur: kernel size must be odd and in 1..4095, got %d×%d", kx, ky);
    return NULL;
  }
  if (!(sx > 0) || !(sy > 0) || !isfinite(sx) || !isfinite(sy)) {
    vtl_error_set(VTL_ERR_ARG, "gaussian_blur: sigma must be positive, got %g, %g", sx, sy);
    return NULL;
  }
  if (s.h < 1 || s.w < 1) return image_copy(img, &s);
  vtl_tensor *t = image_like(img, &s, &d);
  if (!t) return NULL;
  if (vtl_cpu_image_gaussian_blur(&s, &d, kx, ky, sx, sy) != VTL_OK) {
    vtl_tensor_release(t);
    return NULL;
  }
  return t;
}

vtl_tensor *vtl_image_erase(vtl_tensor *img, int64_t top, int64_t left, int64_t h, int64_t w,
                            const double *values, int nvalues, vtl_tensor *noise) {
  vtl_image_view s, d, n;
  if (image_view("erase", img, &s) != VTL_OK) return NULL;
  if (top < 0 || left < 0 || h < 0 || w < 0 || top + h > s.h || left + w > s.w) {
    vtl_error_set(VTL_ERR_ARG, "erase: region of %lld×%lld at (%lld, %lld) is not inside the %lld×%lld image", (long long)h,
                  (long long)w, (long long)top + 1, (long long)left + 1, (long long)s.h, (long long)s.w);
    return NULL;
  }
  float v[64];
  if (noise) {
    if (image_view("erase", noise, &n) != VTL_OK) return NULL;
    if (noise->dtype != VTL_F32 || noise->ndim != 3 || n.c != s.c || n.h != h || n.w != w) {
      vtl_error_set(VTL_ERR_ARG, "erase: noise must be an f32 tensor of shape {%lld, %lld, %lld}", (long long)s.c,
                    (long long)h, (long long)w);
      return NULL;
    }
  } else {
    if (nvalues != 1 && nvalues != s.c) {
      vtl_error_set(VTL_ERR_ARG, "erase: value has %d entries for an image of %lld channels", nvalues, (long long)s.c);
      return NULL;
    }
    if (nvalues > 64) {
      vtl_error_set(VTL_ERR_ARG, "erase: at most 64 values, got %d", nvalues);
      return NULL;
    }
    for (int i = 0; i < nvalues; i++) v[i] = (float)values[i];
  }
  vtl_tensor *t = image_like(img, &s, &d);
  if (!t) return NULL;
  vtl_cpu_image_crop(&s, &d, 0, 0, 0);
  vtl_cpu_image_erase(&d, top, left, h, w, v, nvalues, noise ? &n : NULL);
  return t;
}

/* ---- writing ---- */

typedef struct { FILE *f; bool failed; } sink;

static void sink_write(void *ctx, void *data, int size) {
  sink *k = ctx;
  if (!k->failed && size > 0 && fwrite(data, 1, (size_t)size, k->f) != (size_t)size) k->failed = true;
}

static bool has_ext(const char *path, const char *ext) {
  size_t n = strlen(path), k = strlen(ext);
  if (n < k) return false;
  for (size_t i = 0; i < k; i++)
    if (tolower((unsigned char)path[n - k + i]) != ext[i]) return false;
  return true;
}

vtl_status vtl_image_save(const char *path, vtl_tensor *t, int quality) {
  const char *op = "image.save";
  enum { PNG, JPG, BMP, TGA } fmt;
  if (has_ext(path, ".png")) fmt = PNG;
  else if (has_ext(path, ".jpg") || has_ext(path, ".jpeg")) fmt = JPG;
  else if (has_ext(path, ".bmp")) fmt = BMP;
  else if (has_ext(path, ".tga")) fmt = TGA;
  else return vtl_error_set(VTL_ERR_ARG, "%s: %s: unknown image extension (expected .png, .jpg, .jpeg, .bmp or .tga)", op, path);
  if (quality < 1 || quality > 100) return vtl_error_set(VTL_ERR_ARG, "%s: %s: quality must be in 1..100, got %d", op, path, quality);
  vtl_image_view s, d;
  if (image_view(op, t, &s) != VTL_OK) return vtl_error_status();
  if (s.c < 1 || s.c > 4) return vtl_error_set(VTL_ERR_ARG, "%s: %s: image must have 1 to 4 channels, got %lld", op, path, (long long)s.c);
  if (s.h < 1 || s.w < 1 || s.h > INT_MAX / 4 || s.w > INT_MAX / 4 || s.w * s.c > INT_MAX)
    return vtl_error_set(VTL_ERR_ARG, "%s: %s: cannot write an image of %lld×%lld pixels", op, path, (long long)s.w, (long long)s.h);
  if (fmt == JPG && (s.h > 65535 || s.w > 65535))
    return vtl_error_set(VTL_ERR_ARG, "%s: %s: JPEG is limited to 65535×65535 pixels", op, path);
  /* pixels as contiguous u8 H×W×C */
  vtl_tensor *u8 = image_new(VTL_U8, 3, s.c, s.h, s.w, &d);
  if (!u8) return vtl_error_status();
  if (t->dtype == VTL_U8) vtl_cpu_image_crop(&s, &d, 0, 0, 0);
  else vtl_cpu_image_affine(&s, &d, 255.0f, 1.0f, NULL, NULL);

  size_t n = strlen(path) + 32;
  char *tmp = malloc(n);
  if (!tmp) {
    vtl_tensor_release(u8);
    return vtl_error_set(VTL_ERR_OOM, "%s: %s: out of memory", op, path);
  }
  snprintf(tmp, n, "%s.tmp.%ld", path, (long)getpid());
  sink k = {fopen(tmp, "wb"), false};
  if (!k.f) {
    vtl_status st = vtl_error_set(VTL_ERR_IO, "%s: %s: cannot create %s (%s)", op, path, tmp, strerror(errno));
    free(tmp);
    vtl_tensor_release(u8);
    return st;
  }
  int w = (int)s.w, h = (int)s.h, c = (int)s.c, ok = 0;
  const void *px = vtl_tensor_data(u8);
  switch (fmt) {
  case PNG: ok = stbi_write_png_to_func(sink_write, &k, w, h, c, px, w * c); break;
  case JPG: ok = stbi_write_jpg_to_func(sink_write, &k, w, h, c, px, quality); break;
  case BMP: ok = stbi_write_bmp_to_func(sink_write, &k, w, h, c, px); break;
  case TGA: ok = stbi_write_tga_to_func(sink_write, &k, w, h, c, px); break;
  }
  vtl_tensor_release(u8);
  const char *what = NULL;
  int e = 0;
  if (!ok) what = "the encoder failed";
  else if (k.failed || fflush(k.f) != 0) { what = "write failed"; e = errno; }
  else if (fsync(fileno(k.f)) != 0 && errno != EINVAL && errno != EROFS) { what = "fsync failed"; e = errno; }
  if (fclose(k.f) != 0 && !what) { what = "close failed"; e = errno; }
  if (!what && rename(tmp, path) != 0) { what = "cannot replace the file"; e = errno; }
  if (what) {
    unlink(tmp);
    free(tmp);
    return vtl_error_set(VTL_ERR_IO, "%s: %s: %s%s%s%s", op, path, what, e ? " (" : "", e ? strerror(e) : "", e ? ")" : "");
  }
  free(tmp);
  return VTL_OK;
}
