/*
 * IDX files (the MNIST format), plain or gzip-compressed.
 *
 * Layout: two zero bytes, a type byte, a dimension count n, then n big-endian u32 sizes and the
 * elements, big-endian, row-major. Whether a file is gzip is told by its first two bytes
 * (1f 8b), not its name.
 *
 * Every size is checked before anything is allocated: a plain file's length must equal the
 * header's claim exactly; a gzip file's claim must agree with the uncompressed length its
 * trailer records (modulo 2^32) and be reachable from its compressed length (deflate expands
 * at most 1032:1), and the stream must then hold exactly that many bytes.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>
#include "core.h"
#include "io.h"

#define IDX_READ_CHUNK ((unsigned)1 << 26)
#define DEFLATE_MAX_RATIO 1032u

typedef struct {
  unsigned char code;
  const char *name;
  int size;      /* bytes per element in the file */
  vtl_dtype dt;  /* what it loads as */
} idx_type;

static const idx_type idx_types[] = {
  {0x08, "unsigned byte", 1, VTL_U8}, {0x09, "signed byte", 1, VTL_I32}, {0x0B, "short", 2, VTL_I32},
  {0x0C, "int", 4, VTL_I32},          {0x0D, "float", 4, VTL_F32},       {0x0E, "double", 8, VTL_F64},
};

static const idx_type *idx_type_of(unsigned char code) {
  for (size_t i = 0; i < sizeof idx_types / sizeof idx_types[0]; i++)
    if (idx_types[i].code == code) return &idx_types[i];
  return NULL;
}

/* A byte source over either a plain file descriptor or a gzip stream. */
typedef struct {
  const char *path;
  int fd;
  gzFile gz;
} idx_src;

/* Reads exactly n bytes: 0, or -1 with the error set (what names the part being read). */
static int src_read(idx_src *s, void *buf, size_t n, const char *what) {
  char *p = buf;
  while (n) {
    unsigned k = n > IDX_READ_CHUNK ? IDX_READ_CHUNK : (unsigned)n;
    if (s->gz) {
      int r = gzread(s->gz, p, k);
      if (r < 0) {
        int zerr;
        const char *m = gzerror(s->gz, &zerr);
        return vtl_error_set(VTL_ERR_FORMAT, "load_idx: %s: corrupt gzip data while reading the %s: %s", s->path, what,
                             m), -1;
      }
      if (r == 0) {
        int zerr;
        const char *m = gzerror(s->gz, &zerr);
        if (zerr != Z_OK)
          return vtl_error_set(VTL_ERR_FORMAT, "load_idx: %s: corrupt gzip data while reading the %s: %s", s->path,
                               what, m), -1;
        return vtl_error_set(VTL_ERR_FORMAT, "load_idx: %s: truncated: the file ends inside the %s", s->path, what), -1;
      }
      p += r; n -= (size_t)r;
    } else {
      ssize_t r = read(s->fd, p, k);
      if (r < 0) {
        if (errno == EINTR) continue;
        return vtl_error_set(VTL_ERR_IO, "load_idx: %s: read failed: %s", s->path, strerror(errno)), -1;
      }
      if (r == 0)
        return vtl_error_set(VTL_ERR_FORMAT, "load_idx: %s: truncated: the file ends inside the %s", s->path, what), -1;
      p += r; n -= (size_t)r;
    }
  }
  return 0;
}

static uint32_t be32(const unsigned char *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Converts n big-endian elements of type ty at src to the host dtype at dst. src may be dst
   itself, or (for types that widen) the last n * size bytes of dst: the loops run forward, so
   every element is read before its bytes are overwritten. */
static void idx_decode(const idx_type *ty, const unsigned char *src, void *dst, int64_t n) {
  switch (ty->code) {
  case 0x09: {
    int32_t *d = dst;
    for (int64_t i = 0; i < n; i++) d[i] = (int8_t)src[i];
    break;
  }
  case 0x0B: {
    int32_t *d = dst;
    for (int64_t i = 0; i < n; i++) d[i] = (int16_t)((uint16_t)src[2 * i] << 8 | src[2 * i + 1]);
    break;
  }
  case 0x0C: case 0x0D: {
    uint32_t *d = dst;
    for (int64_t i = 0; i < n; i++) d[i] = be32(src + 4 * i);
    break;
  }
  case 0x0E: {
    uint64_t *d = dst;
    for (int64_t i = 0; i < n; i++) d[i] = (uint64_t)be32(src + 8 * i) << 32 | be32(src + 8 * i + 4);
    break;
  }
  default: break; /* unsigned byte: stored as is */
  }
}

vtl_tensor *vtl_idx_load(const char *path) {
  if (!path) return vtl_error_set(VTL_ERR_ARG, "load_idx: path is NULL"), NULL;
  idx_src s = {.path = path, .fd = open(path, O_RDONLY | O_CLOEXEC), .gz = NULL};
  if (s.fd < 0) return vtl_error_set(VTL_ERR_IO, "load_idx: %s: cannot open: %s", path, strerror(errno)), NULL;
  vtl_tensor *t = NULL;
  struct stat sb;
  unsigned char head[4], dims[4 * 255], magic[2] = {0, 0}, trailer[4];
  int64_t shape[VTL_MAX_DIMS];
  uint64_t fsize, numel = 1, nbytes, total;
  bool gz;
  const idx_type *ty;
  int ndim;
  char shown[256];
  if (fstat(s.fd, &sb) != 0) {
    vtl_error_set(VTL_ERR_IO, "load_idx: %s: cannot stat: %s", path, strerror(errno));
    goto fail;
  }
  if (!S_ISREG(sb.st_mode)) { vtl_error_set(VTL_ERR_IO, "load_idx: %s: not a regular file", path); goto fail; }
  fsize = (uint64_t)sb.st_size;
  if (fsize == 0) { vtl_error_set(VTL_ERR_FORMAT, "load_idx: %s: empty file (0 bytes)", path); goto fail; }
  if (fsize >= 2 && pread(s.fd, magic, 2, 0) != 2) {
    vtl_error_set(VTL_ERR_IO, "load_idx: %s: read failed: %s", path, strerror(errno));
    goto fail;
  }
  gz = magic[0] == 0x1f && magic[1] == 0x8b;
  if (gz) {
    if (fsize < 18) { vtl_error_set(VTL_ERR_FORMAT, "load_idx: %s: truncated gzip file (%llu bytes)", path,
                                    (unsigned long long)fsize); goto fail; }
    if (pread(s.fd, trailer, 4, (off_t)fsize - 4) != 4) {
      vtl_error_set(VTL_ERR_IO, "load_idx: %s: read failed: %s", path, strerror(errno));
      goto fail;
    }
    s.gz = gzdopen(s.fd, "rb");
    if (!s.gz) { vtl_error_set(VTL_ERR_OOM, "load_idx: %s: cannot start gzip decoding", path); goto fail; }
    s.fd = -1; /* owned by the gzip stream now */
  }
  if (src_read(&s, head, 4, "header") != 0) goto fail;
  if (head[0] != 0 || head[1] != 0) {
    vtl_error_set(VTL_ERR_FORMAT, "load_idx: %s: not an IDX file (bad magic bytes %02x %02x %02x %02x; an IDX file "
                  "starts with 00 00 <type> <ndim>)", path, head[0], head[1], head[2], head[3]);
    goto fail;
  }
  ty = idx_type_of(head[2]);
  if (!ty) {
    vtl_error_set(VTL_ERR_FORMAT, "load_idx: %s: unknown IDX element type 0x%02x (known: 0x08 u8, 0x09 i8, 0x0B i16, "
                  "0x0C i32, 0x0D f32, 0x0E f64)", path, head[2]);
    goto fail;
  }
  ndim = head[3];
  if (ndim == 0 || ndim > VTL_MAX_DIMS) {
    vtl_error_set(VTL_ERR_FORMAT, "load_idx: %s: %d dimensions (an IDX file for vtl has 1 to %d)", path, ndim,
                  VTL_MAX_DIMS);
    goto fail;
  }
  if (src_read(&s, dims, 4 * (size_t)ndim, "dimension sizes") != 0) goto fail;
  for (int d = 0; d < ndim; d++) {
    shape[d] = be32(dims + 4 * d);
    if (__builtin_mul_overflow(numel, (uint64_t)shape[d], &numel) || numel > ((uint64_t)1 << 56)) {
      vtl_shape_format(shape, d + 1, shown, sizeof shown);
      vtl_error_set(VTL_ERR_FORMAT, "load_idx: %s: dimensions %s... are too large", path, shown);
      goto fail;
    }
  }
  vtl_shape_format(shape, ndim, shown, sizeof shown);
  nbytes = numel * (uint64_t)ty->size;
  total = 4 + 4 * (uint64_t)ndim + nbytes;
  if (!gz && total != fsize) {
    vtl_error_set(VTL_ERR_FORMAT, total > fsize
                  ? "load_idx: %s: truncated: shape %s of %s needs %llu bytes, the file has %llu"
                  : "load_idx: %s: extra bytes: shape %s of %s needs %llu bytes, the file has %llu",
                  path, shown, ty->name, (unsigned long long)total, (unsigned long long)fsize);
    goto fail;
  }
  if (gz && ((uint32_t)total != (uint32_t)(trailer[0] | trailer[1] << 8 | trailer[2] << 16 | (uint32_t)trailer[3] << 24)
             || total / DEFLATE_MAX_RATIO > fsize)) {
    vtl_error_set(VTL_ERR_FORMAT, "load_idx: %s: shape %s of %s needs %llu bytes, which this gzip file (%llu bytes, "
                  "trailer size %u) cannot hold: truncated or corrupt", path, shown, ty->name, (unsigned long long)total,
                  (unsigned long long)fsize, (unsigned)(trailer[0] | trailer[1] << 8 | trailer[2] << 16 |
                  (uint32_t)trailer[3] << 24));
    goto fail;
  }
  t = vtl_tensor_empty(shape, ndim, ty->dt, (vtl_device){VTL_CPU, 0});
  if (!t) {
    char msg[512];
    snprintf(msg, sizeof msg, "%s", vtl_error_message());
    vtl_error_set(vtl_error_status(), "load_idx: %s: shape %s: %s", path, shown, msg);
    goto fail;
  }
  /* the raw bytes go to the end of the tensor's buffer, so widening to 4 bytes decodes in place */
  if (numel > 0) {
    size_t out_bytes = (size_t)numel * vtl_dtype_size(ty->dt);
    unsigned char *raw = (unsigned char *)vtl_tensor_data(t) + (out_bytes - (size_t)nbytes);
    if (src_read(&s, raw, (size_t)nbytes, "data") != 0) goto fail;
    if (ty->dt != VTL_U8) idx_decode(ty, raw, vtl_tensor_data(t), (int64_t)numel);
  }
  if (gz) {
    unsigned char extra;
    int r = gzread(s.gz, &extra, 1);
    if (r != 0) {
      int zerr;
      const char *m = gzerror(s.gz, &zerr);
      if (r < 0) vtl_error_set(VTL_ERR_FORMAT, "load_idx: %s: corrupt gzip data after the elements: %s", path, m);
      else vtl_error_set(VTL_ERR_FORMAT, "load_idx: %s: extra bytes after the %s elements of shape %s", path, ty->name,
                         shown);
      goto fail;
    }
    int zerr;
    const char *m = gzerror(s.gz, &zerr);
    if (zerr != Z_OK) {
      vtl_error_set(VTL_ERR_FORMAT, "load_idx: %s: corrupt gzip data: %s", path, m);
      goto fail;
    }
    gzclose(s.gz);
  } else {
    close(s.fd);
  }
  return t;
fail:
  vtl_tensor_release(t);
  if (s.gz) gzclose(s.gz);
  if (s.fd >= 0) close(s.fd);
  return NULL;
}
