/*
 * Tensor files: safetensors and .npy readers and writers.
 *
 * Readers: every size read from a file is checked against the file's real size before it is
 * used, the whole header is validated before any tensor is allocated, and data is read with
 * pread into tensors whose byte size the header check has already bounded by the file size.
 * Writers: atomic (temporary file in the same directory, fsync, rename).
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cjson/cJSON.h>
#include "core.h"
#include "ops.h"
#include "io.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define HOST_BIG_ENDIAN 1
#else
#define HOST_BIG_ENDIAN 0
#endif

#define ST_MAX_HEADER (100u * 1000u * 1000u) /* safetensors header limit, as the reference */
#define NPY_MAX_HEADER (1u << 20)
#define CHUNK_BYTES ((size_t)1 << 20)
#define NAME_SHOWN 128

/* ------------------------------------------------------------------------------------------ */
/* Element formats found in files and the vtl dtype each one loads as.                        */

typedef enum {
  FMT_F32, FMT_F64, FMT_F16, FMT_BF16, FMT_I64, FMT_I32, FMT_U8, FMT_BOOL,
  FMT_I8, FMT_I16, FMT_U16, FMT_U32, FMT_U64, FMT_F8E4M3, FMT_F8E5M2, FMT_COUNT
} elem_fmt;

static const struct { const char *st; int size; vtl_dtype dt; } fmt_info[FMT_COUNT] = {
  [FMT_F32] = {"F32", 4, VTL_F32},   [FMT_F64] = {"F64", 8, VTL_F64},
  [FMT_F16] = {"F16", 2, VTL_F16},   [FMT_BF16] = {"BF16", 2, VTL_BF16},
  [FMT_I64] = {"I64", 8, VTL_I64},   [FMT_I32] = {"I32", 4, VTL_I32},
  [FMT_U8] = {"U8", 1, VTL_U8},      [FMT_BOOL] = {"BOOL", 1, VTL_BOOL},
  [FMT_I8] = {"I8", 1, VTL_I32},     [FMT_I16] = {"I16", 2, VTL_I32},
  [FMT_U16] = {"U16", 2, VTL_I32},   [FMT_U32] = {"U32", 4, VTL_I64},
  [FMT_U64] = {"U64", 8, VTL_I64},   [FMT_F8E4M3] = {"F8_E4M3", 1, VTL_F32},
  [FMT_F8E5M2] = {"F8_E5M2", 1, VTL_F32},
};

/* The format is stored bit-for-bit as its vtl dtype (no widening, no check). */
static bool fmt_is_native(elem_fmt f) { return f <= FMT_U8; }

static const char *st_dtype_of(vtl_dtype dt) {
  for (int f = 0; f <= FMT_BOOL; f++)
    if (fmt_info[f].dt == dt) return fmt_info[f].st;
  return NULL;
}

static uint16_t ld16(const unsigned char *p, bool swap) {
  uint16_t v;
  memcpy(&v, p, 2);
  return swap ? __builtin_bswap16(v) : v;
}
static uint32_t ld32(const unsigned char *p, bool swap) {
  uint32_t v;
  memcpy(&v, p, 4);
  return swap ? __builtin_bswap32(v) : v;
}
static uint64_t ld64(const unsigned char *p, bool swap) {
  uint64_t v;
  memcpy(&v, p, 8);
  return swap ? __builtin_bswap64(v) : v;
}

/* F8 E4M3 ("fn"): bias 7, no infinities, S.1111.111 is NaN. */
static float f8e4m3_to_f32(uint8_t b) {
  int e = (b >> 3) & 0xf, m = b & 7;
  float v;
  if (e == 15 && m == 7) v = NAN;
  else if (e == 0) v = ldexpf((float)m, -9);          /* m/8 * 2^-6 */
  else v = ldexpf((float)(8 + m), e - 10);             /* (1+m/8) * 2^(e-7) */
  return (b & 0x80) ? -v : v;
}

/* F8 E5M2: bias 15, infinities and NaNs as in IEEE half precision. */
static float f8e5m2_to_f32(uint8_t b) {
  int e = (b >> 2) & 0x1f, m = b & 3;
  float v;
  if (e == 31) v = m ? NAN : INFINITY;
  else if (e == 0) v = ldexpf((float)m, -16);         /* m/4 * 2^-14 */
  else v = ldexpf((float)(4 + m), e - 17);            /* (1+m/4) * 2^(e-15) */
  return (b & 0x80) ? -v : v;
}

/* Converts n elements of format f (byte-swapped when swap) into dst of fmt_info[f].dt.
   Returns -1, or the index of the first element that has no value in the dtype (a BOOL byte
   other than 0/1, a U64 above INT64_MAX). */
static int64_t convert_elems(elem_fmt f, bool swap, const unsigned char *src, void *dst, int64_t n) {
  switch (f) {
  case FMT_F32: case FMT_I32:
    for (int64_t i = 0; i < n; i++) { uint32_t v = ld32(src + 4 * i, swap); memcpy((char *)dst + 4 * i, &v, 4); }
    break;
  case FMT_F64: case FMT_I64:
    for (int64_t i = 0; i < n; i++) { uint64_t v = ld64(src + 8 * i, swap); memcpy((char *)dst + 8 * i, &v, 8); }
    break;
  case FMT_F16: case FMT_BF16:
    for (int64_t i = 0; i < n; i++) ((uint16_t *)dst)[i] = ld16(src + 2 * i, swap);
    break;
  case FMT_U8: memcpy(dst, src, (size_t)n); break;
  case FMT_BOOL:
    for (int64_t i = 0; i < n; i++) {
      if (src[i] > 1) return i;
      ((uint8_t *)dst)[i] = src[i];
    }
    break;
  case FMT_I8: for (int64_t i = 0; i < n; i++) ((int32_t *)dst)[i] = (int8_t)src[i]; break;
  case FMT_I16: for (int64_t i = 0; i < n; i++) ((int32_t *)dst)[i] = (int16_t)ld16(src + 2 * i, swap); break;
  case FMT_U16: for (int64_t i = 0; i < n; i++) ((int32_t *)dst)[i] = ld16(src + 2 * i, swap); break;
  case FMT_U32: for (int64_t i = 0; i < n; i++) ((int64_t *)dst)[i] = ld32(src + 4 * i, swap); break;
  case FMT_U64:
    for (int64_t i = 0; i < n; i++) {
      uint64_t v = ld64(src + 8 * i, swap);
      if (v > (uint64_t)INT64_MAX) return i;
      ((int64_t *)dst)[i] = (int64_t)v;
    }
    break;
  case FMT_F8E4M3: for (int64_t i = 0; i < n; i++) ((float *)dst)[i] = f8e4m3_to_f32(src[i]); break;
  case FMT_F8E5M2: for (int64_t i = 0; i < n; i++) ((float *)dst)[i] = f8e5m2_to_f32(src[i]); break;
  default: break;
  }
  return -1;
}

/* ------------------------------------------------------------------------------------------ */
/* Small helpers                                                                              */

/* A name taken from a file or a caller, fit for an error message: control bytes become '?',
   long names are cut with "...". */
static const char *shown(const char *s, char buf[NAME_SHOWN]) {
  size_t i = 0;
  for (; s[i] && i < NAME_SHOWN - 4; i++) buf[i] = ((unsigned char)s[i] < 0x20 || s[i] == 0x7f) ? '?' : s[i];
  if (s[i]) { memcpy(buf + i, "...", 3); i += 3; }
  buf[i] = 0;
  return buf;
}

static bool utf8_valid(const char *str) {
  const unsigned char *s = (const unsigned char *)str;
  while (*s) {
    unsigned c = *s;
    int len;
    uint32_t cp;
    if (c < 0x80) { s++; continue; }
    if (c >= 0xc2 && c <= 0xdf) { len = 1; cp = c & 0x1f; }
    else if (c >= 0xe0 && c <= 0xef) { len = 2; cp = c & 0x0f; }
    else if (c >= 0xf0 && c <= 0xf4) { len = 3; cp = c & 0x07; }
    else return false;
    for (int k = 1; k <= len; k++) {
      if ((s[k] & 0xc0) != 0x80) return false;
      cp = cp << 6 | (s[k] & 0x3f);
    }
    if ((len == 2 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) || (len == 3 && (cp < 0x10000 || cp > 0x10ffff)))
      return false;
    s += len + 1;
  }
  return true;
}

static int cmp_cstr(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Reads exactly n bytes at pos: 0, an errno, or -1 for a premature end of file. */
static int pread_full(int fd, void *buf, size_t n, uint64_t pos) {
  char *p = buf;
  while (n) {
    size_t k = n > ((size_t)1 << 30) ? ((size_t)1 << 30) : n;
    ssize_t r = pread(fd, p, k, (off_t)pos);
    if (r < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    if (r == 0) return -1;
    p += r; pos += (uint64_t)r; n -= (size_t)r;
  }
  return 0;
}

static const char *read_err_text(int e) { return e == -1 ? "unexpected end of file" : strerror(e); }

/* Opens a regular file for reading and gives its size; -1 with the error set. */
static int open_regular(const char *op, const char *path, uint64_t *size) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return vtl_error_set(VTL_ERR_IO, "%s: %s: cannot open: %s", op, path, strerror(errno)), -1;
  struct stat sb;
  if (fstat(fd, &sb) != 0) {
    int e = errno;
    close(fd);
    return vtl_error_set(VTL_ERR_IO, "%s: %s: cannot stat: %s", op, path, strerror(e)), -1;
  }
  if (!S_ISREG(sb.st_mode)) {
    close(fd);
    return vtl_error_set(VTL_ERR_IO, "%s: %s: not a regular file", op, path), -1;
  }
  *size = (uint64_t)sb.st_size;
  return fd;
}

/* Reads n elements of format f at byte pos of fd into dst (of the format's vtl dtype).
   *bad receives the index of an element with no value in the dtype, or -1. */
static vtl_status read_elems(const char *op, const char *path, int fd, uint64_t pos, elem_fmt f,
                             bool swap, int64_t n, void *dst, int64_t *bad) {
  size_t esz = (size_t)fmt_info[f].size, dsz = vtl_dtype_size(fmt_info[f].dt);
  *bad = -1;
  if (n == 0) return VTL_OK;
  if (fmt_is_native(f) && !swap) {
    int e = pread_full(fd, dst, (size_t)n * esz, pos);
    if (e) return vtl_error_set(VTL_ERR_IO, "%s: %s: read failed: %s", op, path, read_err_text(e));
    return VTL_OK;
  }
  int64_t per = (int64_t)(CHUNK_BYTES / esz);
  unsigned char *buf = malloc(CHUNK_BYTES);
  if (!buf) return vtl_error_set(VTL_ERR_OOM, "%s: %s: out of memory", op, path);
  for (int64_t done = 0; done < n;) {
    int64_t k = n - done < per ? n - done : per;
    int e = pread_full(fd, buf, (size_t)k * esz, pos + (uint64_t)done * esz);
    if (e) {
      free(buf);
      return vtl_error_set(VTL_ERR_IO, "%s: %s: read failed: %s", op, path, read_err_text(e));
    }
    int64_t b = convert_elems(f, swap, buf, (char *)dst + (size_t)done * dsz, k);
    if (b >= 0) { *bad = done + b; break; }
    done += k;
  }
  free(buf);
  return VTL_OK;
}

/* Re-labels the current core error as "<op>: <path>: <what>: <message>". */
static vtl_status rewrap_error(const char *op, const char *path, const char *what) {
  char msg[768];
  snprintf(msg, sizeof msg, "%s", vtl_error_message());
  return vtl_error_set(vtl_error_status(), "%s: %s: %s: %s", op, path, what, msg);
}

/* ------------------------------------------------------------------------------------------ */
/* Atomic writes: <path>.tmp.<pid>, fsync, rename.                                            */

typedef struct {
  FILE *f;
  char *tmp;
  const char *path;
} atomic_file;

static vtl_status atomic_open(atomic_file *a, const char *path) {
  a->f = NULL;
  a->path = path;
  size_t n = strlen(path) + 32;
  a->tmp = malloc(n);
  if (!a->tmp) return vtl_error_set(VTL_ERR_OOM, "save: %s: out of memory", path);
  snprintf(a->tmp, n, "%s.tmp.%ld", path, (long)getpid());
  int fd = open(a->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
  if (fd < 0) {
    int e = errno;
    free(a->tmp);
    a->tmp = NULL;
    return vtl_error_set(VTL_ERR_IO, "save: %s: cannot create file: %s", path, strerror(e));
  }
  struct stat sb; /* a replaced file keeps its permissions */
  if (stat(path, &sb) == 0 && S_ISREG(sb.st_mode)) (void)fchmod(fd, sb.st_mode & 07777);
  a->f = fdopen(fd, "wb");
  if (!a->f) {
    int e = errno;
    close(fd);
    unlink(a->tmp);
    free(a->tmp);
    a->tmp = NULL;
    return vtl_error_set(VTL_ERR_IO, "save: %s: cannot create file: %s", path, strerror(e));
  }
  return VTL_OK;
}

/* Closes and removes the temporary file; safe to call twice. */
static void atomic_abort(atomic_file *a) {
  if (a->f) fclose(a->f);
  if (a->tmp) { unlink(a->tmp); free(a->tmp); }
  a->f = NULL;
  a->tmp = NULL;
}

static vtl_status atomic_write(atomic_file *a, const void *p, size_t n) {
  errno = 0;
  if (n && fwrite(p, 1, n, a->f) != n) {
    int e = errno;
    vtl_error_set(VTL_ERR_IO, "save: %s: write failed: %s", a->path, strerror(e ? e : EIO));
    atomic_abort(a);
    return VTL_ERR_IO;
  }
  return VTL_OK;
}

static vtl_status atomic_commit(atomic_file *a) {
  const char *what = NULL;
  int e = 0;
  errno = 0;
  if (fflush(a->f) != 0) { what = "write failed"; e = errno; }
  else if (fsync(fileno(a->f)) != 0 && errno != EINVAL && errno != EROFS) { what = "fsync failed"; e = errno; }
  int rc = fclose(a->f);
  a->f = NULL;
  if (!what && rc != 0) { what = "close failed"; e = errno; }
  if (!what && rename(a->tmp, a->path) != 0) { what = "cannot replace the file"; e = errno; }
  if (what) {
    vtl_error_set(VTL_ERR_IO, "save: %s: %s: %s", a->path, what, strerror(e ? e : EIO));
    atomic_abort(a);
    return VTL_ERR_IO;
  }
  free(a->tmp);
  a->tmp = NULL;
  /* make the rename durable; a failure here cannot undo it, so it is not reported */
  char *dir = strdup(a->path);
  if (dir) {
    char *slash = strrchr(dir, '/');
    const char *d = ".";
    if (slash == dir) d = "/";
    else if (slash) { *slash = 0; d = dir; }
    int dfd = open(d, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) { (void)fsync(dfd); close(dfd); }
    free(dir);
  }
  return VTL_OK;
}

/* Writes t's contiguous data little-endian; bools as 0/1 bytes. */
static vtl_status atomic_write_elems(atomic_file *a, const vtl_tensor *t) {
  const unsigned char *p = vtl_tensor_data(t);
  size_t esz = vtl_dtype_size(t->dtype);
  int64_t n = vtl_tensor_numel(t);
  if (t->dtype != VTL_BOOL && (!HOST_BIG_ENDIAN || esz == 1)) return atomic_write(a, p, (size_t)n * esz);
  unsigned char *buf = malloc(CHUNK_BYTES);
  if (!buf) {
    atomic_abort(a);
    return vtl_error_set(VTL_ERR_OOM, "save: %s: out of memory", a->path);
  }
  int64_t per = (int64_t)(CHUNK_BYTES / esz);
  for (int64_t done = 0; done < n;) {
    int64_t k = n - done < per ? n - done : per;
    const unsigned char *s = p + (size_t)done * esz;
    if (t->dtype == VTL_BOOL) for (int64_t i = 0; i < k; i++) buf[i] = s[i] != 0;
    else for (int64_t i = 0; i < k; i++) for (size_t b = 0; b < esz; b++) buf[i * esz + b] = s[i * esz + esz - 1 - b];
    if (atomic_write(a, buf, (size_t)k * esz) != VTL_OK) { free(buf); return VTL_ERR_IO; }
    done += k;
  }
  free(buf);
  return VTL_OK;
}

/* A contiguous CPU version of t (new reference) or NULL with the error set. Device tensors
   are copied to the host: a file never records where a tensor lived. */
static vtl_tensor *contiguous_cpu(const char *path, const char *name, vtl_tensor *t) {
  char nb[NAME_SHOWN];
  if (vtl_tensor_device(t).type != VTL_CPU) {
    vtl_tensor *h = vtl_tensor_to_device(t, (vtl_device){VTL_CPU, 0});
    if (!h) rewrap_error("save", path, name ? shown(name, nb) : "tensor");
    return h;
  }
  if (vtl_tensor_is_contiguous(t)) return vtl_tensor_retain(t);
  vtl_tensor *c = vtl_op_contiguous(t);
  if (!c) rewrap_error("save", path, name ? shown(name, nb) : "tensor");
  return c;
}

/* ------------------------------------------------------------------------------------------ */
/* Growable text buffer                                                                       */

typedef struct { char *p; size_t n, cap; bool oom; } sbuf;

static void sb_add(sbuf *b, const char *s, size_t n) {
  if (b->oom) return;
  if (b->n + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->n + n + 1) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) { b->oom = true; return; }
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->n, s, n);
  b->n += n;
  b->p[b->n] = 0;
}
static void sb_str(sbuf *b, const char *s) { sb_add(b, s, strlen(s)); }
static void sb_u64(sbuf *b, const char *fmt, unsigned long long v) {
  char tmp[48];
  int k = snprintf(tmp, sizeof tmp, fmt, v);
  sb_add(b, tmp, (size_t)k);
}
/* A JSON string literal of s (valid UTF-8). */
static void sb_json_str(sbuf *b, const char *s) {
  sb_add(b, "\"", 1);
  for (const char *p = s; *p; p++) {
    unsigned char c = (unsigned char)*p;
    if (c == '"' || c == '\\') { sb_add(b, "\\", 1); sb_add(b, p, 1); }
    else if (c < 0x20) sb_u64(b, "\\u%04llx", c);
    else sb_add(b, p, 1);
  }
  sb_add(b, "\"", 1);
}

/* ------------------------------------------------------------------------------------------ */
/* safetensors                                                                                */

void vtl_tensor_dict_free(vtl_tensor_dict *d) {
  if (!d) return;
  for (int i = 0; i < d->n; i++) {
    if (d->names) free(d->names[i]);
    if (d->tensors) vtl_tensor_release(d->tensors[i]);
  }
  for (int i = 0; i < d->nmeta; i++) {
    if (d->meta_keys) free(d->meta_keys[i]);
    if (d->meta_vals) free(d->meta_vals[i]);
  }
  free(d->names);
  free(d->tensors);
  free(d->meta_keys);
  free(d->meta_vals);
  memset(d, 0, sizeof *d);
}

typedef struct {
  const char *name;
  elem_fmt fmt;
  int ndim;
  int64_t shape[VTL_MAX_DIMS];
  uint64_t begin, end;
} st_entry;

static int cmp_entry_name(const void *a, const void *b) {
  return strcmp((*(st_entry *const *)a)->name, (*(st_entry *const *)b)->name);
}
static int cmp_entry_offset(const void *a, const void *b) {
  const st_entry *x = *(st_entry *const *)a, *y = *(st_entry *const *)b;
  if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
  if (x->end != y->end) return x->end < y->end ? -1 : 1;
  return 0;
}

static const char *json_type_name(const cJSON *v) {
  if (cJSON_IsString(v)) return "a string";
  if (cJSON_IsNumber(v)) return "a number";
  if (cJSON_IsArray(v)) return "an array";
  if (cJSON_IsObject(v)) return "an object";
  if (cJSON_IsBool(v)) return "a boolean";
  if (cJSON_IsNull(v)) return "null";
  return "invalid";
}

/* A JSON number that is an exact non-negative integer up to 2^53. */
static bool json_uint(const cJSON *v, uint64_t *out) {
  if (!cJSON_IsNumber(v)) return false;
  double d = v->valuedouble;
  if (!(d >= 0 && d <= 9007199254740992.0) || d != floor(d)) return false;
  *out = (uint64_t)d;
  return true;
}

/* Checks one header entry into e: dtype, shape, and data_offsets consistent with both. */
static vtl_status st_parse_entry(const char *path, const cJSON *item, st_entry *e) {
  char nb[NAME_SHOWN];
  const char *nm = shown(item->string, nb);
  e->name = item->string;
  if (!cJSON_IsObject(item))
    return vtl_error_set(VTL_ERR_FORMAT, "load: %s: tensor '%s' header entry is %s, not an object", path, nm,
                         json_type_name(item));
  const cJSON *dtype = cJSON_GetObjectItemCaseSensitive(item, "dtype");
  const cJSON *shape = cJSON_GetObjectItemCaseSensitive(item, "shape");
  const cJSON *offs = cJSON_GetObjectItemCaseSensitive(item, "data_offsets");
  if (!dtype || !shape || !offs)
    return vtl_error_set(VTL_ERR_FORMAT, "load: %s: tensor '%s' header entry lacks \"%s\"", path, nm,
                         !dtype ? "dtype" : !shape ? "shape" : "data_offsets");
  if (!cJSON_IsString(dtype))
    return vtl_error_set(VTL_ERR_FORMAT, "load: %s: tensor '%s' dtype is %s, not a string", path, nm, json_type_name(dtype));
  int f = 0;
  while (f < FMT_COUNT && strcmp(fmt_info[f].st, dtype->valuestring) != 0) f++;
  if (f == FMT_COUNT) {
    char db[NAME_SHOWN];
    return vtl_error_set(VTL_ERR_FORMAT, "load: %s: tensor '%s' has unknown dtype '%s' (supported: F32 F64 F16 BF16 "
                         "I64 I32 I16 I8 U64 U32 U16 U8 BOOL F8_E4M3 F8_E5M2)", path, nm, shown(dtype->valuestring, db));
  }
  e->fmt = (elem_fmt)f;
  if (!cJSON_IsArray(shape))
    return vtl_error_set(VTL_ERR_FORMAT, "load: %s: tensor '%s' shape is %s, not an array of integers", path, nm,
                         json_type_name(shape));
  int ndim = cJSON_GetArraySize(shape);
  if (ndim > VTL_MAX_DIMS)
    return vtl_error_set(VTL_ERR_FORMAT, "load: %s: tensor '%s' shape has %d dimensions (at most %d supported)", path, nm,
                         ndim, VTL_MAX_DIMS);
  e->ndim = ndim;
  uint64_t numel = 1;
  bool overflow = false;
  int k = 0;
  for (const cJSON *d = shape->child; d; d = d->next, k++) {
    uint64_t v;
    if (!json_uint(d, &v)) {
      if (cJSON_IsNumber(d))
        return vtl_error_set(VTL_ERR_FORMAT, "load: %s: tensor '%s' shape entry %d (%.17g) is not a non-negative integer",
                             path, nm, k + 1, d->valuedouble);
      return vtl_error_set(VTL_ERR_FORMAT, "load: %s: tensor '%s' shape entry %d is %s, not a non-negative integer",
                           path, nm, k + 1, json_type_name(d));
    }
    e->shape[k] = (int64_t)v;
    if (__builtin_mul_overflow(numel, v, &numel)) overflow = true;
  }
  uint64_t nbytes = 0;
  char sb[256];
  vtl_shape_format(e->shape, ndim, sb, sizeof sb);
  /* the loaded tensor may be up to 4x wider than the file's elements (F8 -> f32) */
  if (overflow || numel > (uint64_t)INT64_MAX / 8 || __builtin_mul_overflow(numel, (uint64_t)fmt_info[f].size, &nbytes))
    return vtl_error_set(VTL_ERR_FORMAT, "load: %s: tensor '%s' shape %s is too large", path, nm, sb);
  if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2 || !json_uint(offs->child, &e->begin) ||
      !json_uint(offs->child->next, &e->end))
    return vtl_error_set(VTL_ERR_FORMAT, "load: %s: tensor '%s' data_offsets must be [begin, end] with non-negative "
                         "integers", path, nm);
  if (e->begin > e->end)
    return vtl_error_set(VTL_ERR_FORMAT, "load: %s: tensor '%s' data_offsets [%llu, %llu] end before they begin", path,
                         nm, (unsigned long long)e->begin, (unsigned long long)e->end);
  if (e->end - e->begin != nbytes)
    return vtl_error_set(VTL_ERR_FORMAT, "load: %s: tensor '%s' data_offsets [%llu, %llu] do not match shape %s of %s "
                         "(%llu bytes)", path, nm, (unsigned long long)e->begin, (unsigned long long)e->end, sb,
                         fmt_info[f].st, (unsigned long long)nbytes);
  return VTL_OK;
}

/* Checks __metadata__ (an object of string values, or null) and copies it into out. */
static vtl_status st_parse_meta(const char *path, const cJSON *meta, vtl_tensor_dict *out) {
  char nb[NAME_SHOWN];
  if (cJSON_IsNull(meta)) return VTL_OK;
  if (!cJSON_IsObject(meta))
    return vtl_error_set(VTL_ERR_FORMAT, "load: %s: __metadata__ is %s, not an object of strings", path,
                         json_type_name(meta));
  int n = 0;
  for (const cJSON *m = meta->child; m; m = m->next, n++)
    if (!cJSON_IsString(m))
      return vtl_error_set(VTL_ERR_FORMAT, "load: %s: __metadata__ value of key '%s' is %s, not a string", path,
                           shown(m->string, nb), json_type_name(m));
  if (n == 0) return VTL_OK;
  out->meta_keys = calloc((size_t)n, sizeof(char *));
  out->meta_vals = calloc((size_t)n, sizeof(char *));
  if (!out->meta_keys || !out->meta_vals) return vtl_error_set(VTL_ERR_OOM, "load: %s: out of memory", path);
  for (const cJSON *m = meta->child; m; m = m->next) {
    int i = out->nmeta++;
    out->meta_keys[i] = strdup(m->string);
    out->meta_vals[i] = strdup(m->valuestring);
    if (!out->meta_keys[i] || !out->meta_vals[i]) return vtl_error_set(VTL_ERR_OOM, "load: %s: out of memory", path);
  }
  char **ks = malloc((size_t)n * sizeof *ks);
  if (!ks) return vtl_error_set(VTL_ERR_OOM, "load: %s: out of memory", path);
  memcpy(ks, out->meta_keys, (size_t)n * sizeof *ks);
  qsort(ks, (size_t)n, sizeof *ks, cmp_cstr);
  vtl_status st = VTL_OK;
  for (int i = 1; i < n && st == VTL_OK; i++)
    if (strcmp(ks[i - 1], ks[i]) == 0)
      st = vtl_error_set(VTL_ERR_FORMAT, "load: %s: __metadata__ key '%s' appears twice", path, shown(ks[i], nb));
  free(ks);
  return st;
}

/* Checks the whole header: entries, distinct names, metadata, and that the tensors tile the
   data section of dsize bytes exactly. On success *order_out holds the n entries sorted by
   data offset. */
static vtl_status st_check_header(const char *path, const cJSON *root, uint64_t dsize, vtl_tensor_dict *out,
                                  st_entry **entries_out, st_entry ***order_out, int *n_out) {
  char nb[NAME_SHOWN], nb2[NAME_SHOWN];
  int count = 0;
  const cJSON *meta = NULL;
  for (const cJSON *c = root->child; c; c = c->next) {
    if (strcmp(c->string, "__metadata__") == 0) {
      if (meta) return vtl_error_set(VTL_ERR_FORMAT, "load: %s: __metadata__ appears twice in the header", path);
      meta = c;
    } else if (count == INT32_MAX) {
      return vtl_error_set(VTL_ERR_FORMAT, "load: %s: too many tensors", path);
    } else count++;
  }
  st_entry *entries = calloc(count ? (size_t)count : 1, sizeof *entries);
  st_entry **order = calloc(count ? (size_t)count : 1, sizeof *order);
  *entries_out = entries;
  *order_out = order;
  *n_out = 0;
  if (!entries || !order) return vtl_error_set(VTL_ERR_OOM, "load: %s: out of memory", path);
  int i = 0;
  for (const cJSON *c = root->child; c; c = c->next) {
    if (c == meta) continue;
    if (st_parse_entry(path, c, &entries[i]) != VTL_OK) return vtl_error_status();
    order[i] = &entries[i];
    i++;
  }
  *n_out = count;
  if (meta && st_parse_meta(path, meta, out) != VTL_OK) return vtl_error_status();
  qsort(order, (size_t)count, sizeof *order, cmp_entry_name);
  for (i = 1; i < count; i++)
    if (strcmp(order[i - 1]->name, order[i]->name) == 0)
      return vtl_error_set(VTL_ERR_FORMAT, "load: %s: tensor name '%s' appears twice in the header", path,
                           shown(order[i]->name, nb));
  qsort(order, (size_t)count, sizeof *order, cmp_entry_offset);
  for (i = 0; i < count; i++)
    if (order[i]->end > dsize)
      return vtl_error_set(VTL_ERR_FORMAT, "load: %s: tensor '%s' data_offsets [%llu, %llu] extend past the end of the "
                           "data section (%llu bytes; file truncated?)", path, shown(order[i]->name, nb),
                           (unsigned long long)order[i]->begin, (unsigned long long)order[i]->end,
                           (unsigned long long)dsize);
  uint64_t pos = 0;
  for (i = 0; i < count; i++) {
    const st_entry *e = order[i];
    if (e->begin < pos)
      return vtl_error_set(VTL_ERR_FORMAT, "load: %s: tensors '%s' and '%s' overlap (data_offsets [%llu, %llu] and "
                           "[%llu, %llu])", path, shown(order[i - 1]->name, nb), shown(e->name, nb2),
                           (unsigned long long)order[i - 1]->begin, (unsigned long long)order[i - 1]->end,
                           (unsigned long long)e->begin, (unsigned long long)e->end);
    if (e->begin > pos)
      return vtl_error_set(VTL_ERR_FORMAT, "load: %s: data section has a hole: bytes [%llu, %llu) before tensor '%s' "
                           "belong to no tensor", path, (unsigned long long)pos, (unsigned long long)e->begin,
                           shown(e->name, nb));
    pos = e->end;
  }
  if (pos != dsize)
    return vtl_error_set(VTL_ERR_FORMAT, "load: %s: data section has a hole: its last %llu bytes belong to no tensor",
                         path, (unsigned long long)(dsize - pos));
  return VTL_OK;
}

/* Bounds what the JSON parser will build: a safetensors header nests no deeper than
   root -> entry -> shape and holds no array longer than a shape, so a header that does is
   refused before it can make the parser allocate many times its own size (or recurse deeply). */
#define ST_MAX_DEPTH 4
#define ST_MAX_ARRAY 64
static vtl_status st_prescan(const char *path, const char *h, size_t n) {
  int depth = 0;
  bool in_str = false, is_arr[ST_MAX_DEPTH + 1] = {false};
  int count[ST_MAX_DEPTH + 1] = {0};
  for (size_t i = 0; i < n; i++) {
    char c = h[i];
    if (in_str) {
      if (c == '\\') i++;
      else if (c == '"') in_str = false;
      continue;
    }
    if (c == '"') in_str = true;
    else if (c == '[' || c == '{') {
      if (++depth > ST_MAX_DEPTH)
        return vtl_error_set(VTL_ERR_FORMAT, "load: %s: header nests deeper than %d levels (not a safetensors header)",
                             path, ST_MAX_DEPTH);
      is_arr[depth] = c == '[';
      count[depth] = 0;
    } else if (c == ']' || c == '}') {
      if (depth > 0) depth--;
    } else if (c == ',' && depth > 0 && is_arr[depth] && ++count[depth] >= ST_MAX_ARRAY) {
      return vtl_error_set(VTL_ERR_FORMAT, "load: %s: header holds an array of more than %d elements (not a "
                           "safetensors header)", path, ST_MAX_ARRAY);
    }
  }
  return VTL_OK;
}

vtl_status vtl_safetensors_load(const char *path, vtl_tensor_dict *out) {
  memset(out, 0, sizeof *out);
  if (!path) return vtl_error_set(VTL_ERR_ARG, "load: path is NULL");
  uint64_t fsize;
  int fd = open_regular("load", path, &fsize);
  if (fd < 0) return vtl_error_status();
  char *hbuf = NULL;
  cJSON *root = NULL;
  st_entry *entries = NULL, **order = NULL;
  int n = 0, e;
  vtl_status st = VTL_OK;
  unsigned char lenb[8];
  uint64_t hlen, data_start;
  const char *endp = NULL;
  if (fsize < 8) {
    st = vtl_error_set(VTL_ERR_FORMAT, "load: %s: file is too short to be safetensors (%llu bytes; the header length "
                       "alone takes 8)", path, (unsigned long long)fsize);
    goto done;
  }
  if ((e = pread_full(fd, lenb, 8, 0))) {
    st = vtl_error_set(VTL_ERR_IO, "load: %s: read failed: %s", path, read_err_text(e));
    goto done;
  }
  hlen = ld64(lenb, HOST_BIG_ENDIAN);
  if (hlen > ST_MAX_HEADER) {
    st = vtl_error_set(VTL_ERR_FORMAT, "load: %s: header length %llu exceeds the 100 MB limit (not a safetensors "
                       "file?)", path, (unsigned long long)hlen);
    goto done;
  }
  if (hlen > fsize - 8) {
    st = vtl_error_set(VTL_ERR_FORMAT, "load: %s: header length %llu is larger than the rest of the file (%llu bytes; "
                       "truncated or not a safetensors file?)", path, (unsigned long long)hlen,
                       (unsigned long long)(fsize - 8));
    goto done;
  }
  hbuf = malloc((size_t)hlen + 1);
  if (!hbuf) {
    st = vtl_error_set(VTL_ERR_OOM, "load: %s: out of memory for a %llu-byte header", path, (unsigned long long)hlen);
    goto done;
  }
  if ((e = pread_full(fd, hbuf, (size_t)hlen, 8))) {
    st = vtl_error_set(VTL_ERR_IO, "load: %s: read failed: %s", path, read_err_text(e));
    goto done;
  }
  hbuf[hlen] = 0;
  if (memchr(hbuf, 0, (size_t)hlen)) {
    st = vtl_error_set(VTL_ERR_FORMAT, "load: %s: header is not valid JSON (it contains a NUL byte)", path);
    goto done;
  }
  if ((st = st_prescan(path, hbuf, (size_t)hlen)) != VTL_OK) goto done;
  root = cJSON_ParseWithLengthOpts(hbuf, (size_t)hlen + 1, &endp, 1); /* + its NUL: cJSON wants one */
  if (!root) {
    long at = endp && endp >= hbuf && endp <= hbuf + hlen ? (long)(endp - hbuf) : -1;
    st = vtl_error_set(VTL_ERR_FORMAT, "load: %s: header is not valid JSON (error at byte %ld of %llu)", path, at,
                       (unsigned long long)hlen);
    goto done;
  }
  if (!cJSON_IsObject(root)) {
    st = vtl_error_set(VTL_ERR_FORMAT, "load: %s: header is %s, not a JSON object", path, json_type_name(root));
    goto done;
  }
  data_start = 8 + hlen;
  st = st_check_header(path, root, fsize - data_start, out, &entries, &order, &n);
  if (st != VTL_OK) goto done;

  out->names = calloc(n ? (size_t)n : 1, sizeof(char *));
  out->tensors = calloc(n ? (size_t)n : 1, sizeof(vtl_tensor *));
  if (!out->names || !out->tensors) { st = vtl_error_set(VTL_ERR_OOM, "load: %s: out of memory", path); goto done; }
  for (int i = 0; i < n; i++) {
    const st_entry *en = order[i];
    char nb[NAME_SHOWN];
    out->n = i + 1;
    out->names[i] = strdup(en->name);
    if (!out->names[i]) { st = vtl_error_set(VTL_ERR_OOM, "load: %s: out of memory", path); goto done; }
    vtl_tensor *t = vtl_tensor_empty(en->shape, en->ndim, fmt_info[en->fmt].dt, (vtl_device){VTL_CPU, 0});
    if (!t) {
      char what[NAME_SHOWN + 16];
      snprintf(what, sizeof what, "tensor '%s'", shown(en->name, nb));
      st = rewrap_error("load", path, what);
      goto done;
    }
    out->tensors[i] = t;
    int64_t bad;
    st = read_elems("load", path, fd, data_start + en->begin, en->fmt, HOST_BIG_ENDIAN, vtl_tensor_numel(t),
                    vtl_tensor_data(t), &bad);
    if (st != VTL_OK) goto done;
    if (bad >= 0) {
      st = vtl_error_set(VTL_ERR_FORMAT, en->fmt == FMT_BOOL
                         ? "load: %s: tensor '%s' of dtype BOOL holds a byte other than 0 or 1 at element %lld"
                         : "load: %s: tensor '%s' of dtype U64 holds a value above the i64 maximum at element %lld",
                         path, shown(en->name, nb), (long long)bad + 1);
      goto done;
    }
  }
done:
  if (st != VTL_OK) vtl_tensor_dict_free(out);
  free(entries);
  free(order);
  cJSON_Delete(root);
  free(hbuf);
  close(fd);
  return st;
}

typedef struct { const char *s; int i; } name_idx;
static int cmp_name_idx(const void *a, const void *b) {
  const name_idx *x = a, *y = b;
  int c = strcmp(x->s, y->s);
  return c ? c : (x->i > y->i) - (x->i < y->i);
}

vtl_status vtl_safetensors_save(const char *path, int n, const char *const *names, vtl_tensor *const *tensors,
                                int nmeta, const char *const *keys, const char *const *vals) {
  char nb[NAME_SHOWN];
  if (!path) return vtl_error_set(VTL_ERR_ARG, "save: path is NULL");
  if (n < 0 || nmeta < 0 || (n > 0 && (!names || !tensors)) || (nmeta > 0 && (!keys || !vals)))
    return vtl_error_set(VTL_ERR_ARG, "save: %s: bad tensor or metadata arrays", path);
  for (int i = 0; i < n; i++) {
    if (!names[i]) return vtl_error_set(VTL_ERR_ARG, "save: %s: tensor name %d is NULL", path, i + 1);
    if (!tensors[i]) return vtl_error_set(VTL_ERR_ARG, "save: %s: tensor '%s' is NULL", path, shown(names[i], nb));
    if (!utf8_valid(names[i]))
      return vtl_error_set(VTL_ERR_ARG, "save: %s: tensor name '%s' is not valid UTF-8", path, shown(names[i], nb));
    if (strcmp(names[i], "__metadata__") == 0)
      return vtl_error_set(VTL_ERR_ARG, "save: %s: '__metadata__' is reserved and cannot name a tensor", path);
    if ((unsigned)tensors[i]->dtype >= VTL_NDTYPES)
      return vtl_error_set(VTL_ERR_ARG, "save: %s: tensor '%s' has an invalid dtype", path, shown(names[i], nb));
  }
  for (int i = 0; i < nmeta; i++) {
    if (!keys[i] || !vals[i]) return vtl_error_set(VTL_ERR_ARG, "save: %s: metadata entry %d is NULL", path, i + 1);
    if (!utf8_valid(keys[i]))
      return vtl_error_set(VTL_ERR_ARG, "save: %s: metadata key '%s' is not valid UTF-8", path, shown(keys[i], nb));
    if (!utf8_valid(vals[i]))
      return vtl_error_set(VTL_ERR_ARG, "save: %s: metadata value of key '%s' is not valid UTF-8", path,
                           shown(keys[i], nb));
  }
  name_idx *ord = malloc((size_t)(n > nmeta ? n : nmeta) * sizeof *ord + sizeof *ord);
  vtl_tensor **conts = calloc(n ? (size_t)n : 1, sizeof *conts);
  const char **sorted = calloc(n ? (size_t)n : 1, sizeof *sorted);
  sbuf h = {0};
  vtl_status st = VTL_OK;
  atomic_file af = {0};
  unsigned char lenb[8];
  uint64_t pos = 0;
  if (!ord || !conts || !sorted) { st = vtl_error_set(VTL_ERR_OOM, "save: %s: out of memory", path); goto done; }
  for (int i = 0; i < nmeta; i++) ord[i] = (name_idx){keys[i], i};
  qsort(ord, (size_t)nmeta, sizeof *ord, cmp_name_idx);
  for (int i = 1; i < nmeta; i++)
    if (strcmp(ord[i - 1].s, ord[i].s) == 0) {
      st = vtl_error_set(VTL_ERR_ARG, "save: %s: metadata key '%s' appears twice", path, shown(ord[i].s, nb));
      goto done;
    }
  for (int i = 0; i < n; i++) ord[i] = (name_idx){names[i], i};
  qsort(ord, (size_t)n, sizeof *ord, cmp_name_idx);
  for (int i = 1; i < n; i++)
    if (strcmp(ord[i - 1].s, ord[i].s) == 0) {
      st = vtl_error_set(VTL_ERR_ARG, "save: %s: tensor name '%s' appears twice", path, shown(ord[i].s, nb));
      goto done;
    }
  for (int i = 0; i < n; i++) {
    conts[i] = contiguous_cpu(path, ord[i].s, tensors[ord[i].i]);
    if (!conts[i]) { st = vtl_error_status(); goto done; }
    sorted[i] = ord[i].s;
  }

  sb_str(&h, "{");
  if (nmeta > 0) { /* metadata sorted by key too, so that equal inputs give equal files */
    for (int i = 0; i < nmeta; i++) ord[i] = (name_idx){keys[i], i};
    qsort(ord, (size_t)nmeta, sizeof *ord, cmp_name_idx);
    sb_str(&h, "\"__metadata__\":{");
    for (int i = 0; i < nmeta; i++) {
      if (i) sb_str(&h, ",");
      sb_json_str(&h, keys[ord[i].i]);
      sb_str(&h, ":");
      sb_json_str(&h, vals[ord[i].i]);
    }
    sb_str(&h, "}");
  }
  for (int i = 0; i < n; i++) {
    const vtl_tensor *t = conts[i];
    uint64_t nbytes = (uint64_t)vtl_tensor_numel(t) * vtl_dtype_size(t->dtype);
    if (i || nmeta > 0) sb_str(&h, ",");
    sb_json_str(&h, sorted[i]);
    sb_str(&h, ":{\"dtype\":\"");
    sb_str(&h, st_dtype_of(t->dtype));
    sb_str(&h, "\",\"shape\":[");
    for (int d = 0; d < t->ndim; d++) sb_u64(&h, d ? ",%llu" : "%llu", (unsigned long long)t->shape[d]);
    sb_u64(&h, "],\"data_offsets\":[%llu,", pos);
    sb_u64(&h, "%llu]}", pos + nbytes);
    pos += nbytes;
  }
  sb_str(&h, "}");
  while (!h.oom && h.n % 8) sb_str(&h, " ");
  if (h.oom) { st = vtl_error_set(VTL_ERR_OOM, "save: %s: out of memory for the header", path); goto done; }

  for (int b = 0; b < 8; b++) lenb[b] = (unsigned char)((uint64_t)h.n >> (8 * b));
  if ((st = atomic_open(&af, path)) != VTL_OK) goto done;
  if ((st = atomic_write(&af, lenb, 8)) != VTL_OK) goto done;
  if ((st = atomic_write(&af, h.p, h.n)) != VTL_OK) goto done;
  for (int i = 0; i < n; i++)
    if ((st = atomic_write_elems(&af, conts[i])) != VTL_OK) goto done;
  st = atomic_commit(&af);
done:
  if (st != VTL_OK) atomic_abort(&af);
  for (int i = 0; i < n && conts; i++) vtl_tensor_release(conts[i]);
  free(conts);
  free(sorted);
  free(ord);
  free(h.p);
  return st;
}

/* ------------------------------------------------------------------------------------------ */
/* .npy                                                                                       */

static const unsigned char npy_magic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};

int vtl_npy_sniff(const char *path) {
  uint64_t size;
  int fd = open_regular("load", path, &size);
  if (fd < 0) return -1;
  unsigned char b[6];
  size_t k = size < 6 ? (size_t)size : 6;
  int e = pread_full(fd, b, k, 0);
  close(fd);
  if (e) return vtl_error_set(VTL_ERR_IO, "load: %s: read failed: %s", path, read_err_text(e)), -1;
  return k > 0 && memcmp(b, npy_magic, k) == 0; /* a cut-off magic still reads as a (truncated) .npy */
}

/* The header dict of an .npy file: "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }". */
typedef struct {
  const char *p, *end;
  const char *path;
  char descr[40];
  bool fortran;
  int ndim;
  int64_t shape[VTL_MAX_DIMS];
} npy_header;

static void npy_ws(npy_header *h) {
  while (h->p < h->end && (*h->p == ' ' || *h->p == '\t' || *h->p == '\n' || *h->p == '\r')) h->p++;
}

static bool npy_lit(npy_header *h, const char *s) {
  size_t n = strlen(s);
  if ((size_t)(h->end - h->p) >= n && memcmp(h->p, s, n) == 0) { h->p += n; return true; }
  return false;
}

static vtl_status npy_bad(npy_header *h, const char *what) {
  return vtl_error_set(VTL_ERR_FORMAT, "load: %s: bad .npy header: %s", h->path, what);
}

/* A quoted string without escapes, into buf. */
static vtl_status npy_string(npy_header *h, char *buf, size_t n, const char *what) {
  if (h->p >= h->end || (*h->p != '\'' && *h->p != '"')) return npy_bad(h, what);
  char q = *h->p++;
  size_t k = 0;
  while (h->p < h->end && *h->p != q) {
    if (*h->p == '\\' || (unsigned char)*h->p < 0x20 || k + 1 >= n) return npy_bad(h, what);
    buf[k++] = *h->p++;
  }
  if (h->p >= h->end) return npy_bad(h, what);
  h->p++;
  buf[k] = 0;
  return VTL_OK;
}

static vtl_status npy_shape(npy_header *h) {
  if (!npy_lit(h, "(")) return npy_bad(h, "'shape' is not a tuple of integers");
  h->ndim = 0;
  bool comma = false;
  for (;;) {
    npy_ws(h);
    if (npy_lit(h, ")")) break;
    if (h->ndim > 0 && !comma) return npy_bad(h, "'shape' is not a tuple of integers");
    if (h->p >= h->end || *h->p < '0' || *h->p > '9') return npy_bad(h, "'shape' entries must be non-negative integers");
    int64_t v = 0;
    while (h->p < h->end && *h->p >= '0' && *h->p <= '9') {
      if (v > (INT64_MAX - 9) / 10) return npy_bad(h, "'shape' entry is too large");
      v = v * 10 + (*h->p++ - '0');
    }
    if (h->p < h->end && (*h->p == 'L' || *h->p == 'l')) h->p++; /* Python 2 long */
    if (h->ndim == VTL_MAX_DIMS) {
      char msg[64];
      snprintf(msg, sizeof msg, "'shape' has more than %d dimensions", VTL_MAX_DIMS);
      return npy_bad(h, msg);
    }
    h->shape[h->ndim++] = v;
    npy_ws(h);
    comma = npy_lit(h, ",");
  }
  if (h->ndim == 1 && !comma) return npy_bad(h, "'shape' (n) is not a tuple; a 1-element tuple is written (n,)");
  return VTL_OK;
}

static vtl_status npy_parse_header(npy_header *h) {
  bool have[3] = {false, false, false};
  npy_ws(h);
  if (!npy_lit(h, "{")) return npy_bad(h, "not a Python dict literal");
  for (;;) {
    npy_ws(h);
    if (npy_lit(h, "}")) break;
    char key[32];
    if (npy_string(h, key, sizeof key, "expected a quoted key ('descr', 'fortran_order' or 'shape')") != VTL_OK)
      return VTL_ERR_FORMAT;
    npy_ws(h);
    if (!npy_lit(h, ":")) return npy_bad(h, "expected ':' after a key");
    npy_ws(h);
    int which = strcmp(key, "descr") == 0 ? 0 : strcmp(key, "fortran_order") == 0 ? 1 : strcmp(key, "shape") == 0 ? 2 : -1;
    if (which < 0) {
      char msg[80];
      snprintf(msg, sizeof msg, "unexpected key '%s'", key);
      return npy_bad(h, msg);
    }
    if (have[which]) return npy_bad(h, "a key appears twice");
    have[which] = true;
    if (which == 0) {
      if (h->p < h->end && *h->p == '[')
        return vtl_error_set(VTL_ERR_FORMAT, "load: %s: unsupported .npy dtype: structured arrays are not supported",
                             h->path);
      if (npy_string(h, h->descr, sizeof h->descr, "'descr' is not a dtype string") != VTL_OK) return VTL_ERR_FORMAT;
    } else if (which == 1) {
      if (npy_lit(h, "True")) h->fortran = true;
      else if (npy_lit(h, "False")) h->fortran = false;
      else return npy_bad(h, "'fortran_order' is not True or False");
    } else if (npy_shape(h) != VTL_OK) return VTL_ERR_FORMAT;
    npy_ws(h);
    if (npy_lit(h, ",")) continue;
    if (npy_lit(h, "}")) break;
    return npy_bad(h, "expected ',' or '}' after a value");
  }
  npy_ws(h);
  if (h->p != h->end) return npy_bad(h, "unexpected text after the dict");
  if (!have[0] || !have[1] || !have[2])
    return npy_bad(h, !have[0] ? "missing 'descr'" : !have[1] ? "missing 'fortran_order'" : "missing 'shape'");
  return VTL_OK;
}

/* Maps a descr like '<f4' to an element format and whether its bytes need swapping. */
static vtl_status npy_descr(const char *path, const char *d, elem_fmt *f, bool *swap) {
  static const struct { const char *code; elem_fmt f; } map[] = {
    {"f2", FMT_F16}, {"f4", FMT_F32}, {"f8", FMT_F64}, {"i1", FMT_I8}, {"i2", FMT_I16}, {"i4", FMT_I32},
    {"i8", FMT_I64}, {"u1", FMT_U8}, {"u2", FMT_U16}, {"u4", FMT_U32}, {"u8", FMT_U64}, {"b1", FMT_BOOL},
  };
  char order = d[0];
  if (strchr(d, 'O'))
    return vtl_error_set(VTL_ERR_FORMAT, "load: %s: unsupported .npy dtype '%s': object arrays are not supported "
                         "(vtl never unpickles)", path, d);
  int k = -1;
  if (order == '<' || order == '>' || order == '|' || order == '=')
    for (size_t i = 0; i < sizeof map / sizeof *map; i++)
      if (strcmp(d + 1, map[i].code) == 0) k = (int)i;
  if (k < 0)
    return vtl_error_set(VTL_ERR_FORMAT, "load: %s: unsupported .npy dtype '%s' (supported: f2 f4 f8 i1 i2 i4 i8 u1 "
                         "u2 u4 u8 b1)", path, d);
  *f = map[k].f;
  int size = fmt_info[*f].size;
  if (order == '|' && size > 1)
    return vtl_error_set(VTL_ERR_FORMAT, "load: %s: .npy dtype '%s' has no byte order", path, d);
  *swap = size > 1 && ((order == '<' && HOST_BIG_ENDIAN) || (order == '>' && !HOST_BIG_ENDIAN));
  return VTL_OK;
}

/* dst (row-major, shape[0..ndim)) = src holding the same array in column-major order. */
static void fortran_to_c(void *dst, const void *src, const int64_t *shape, int ndim, size_t esz) {
  int64_t fstride[VTL_MAX_DIMS], idx[VTL_MAX_DIMS] = {0}, n = 1;
  for (int d = 0; d < ndim; d++) { fstride[d] = n; n *= shape[d]; }
  int64_t so = 0;
  for (int64_t i = 0; i < n; i++) {
    memcpy((char *)dst + (size_t)i * esz, (const char *)src + (size_t)so * esz, esz);
    for (int d = ndim - 1; d >= 0; d--) { /* advance the row-major counter */
      so += fstride[d];
      if (++idx[d] < shape[d]) break;
      so -= fstride[d] * shape[d];
      idx[d] = 0;
    }
  }
}

vtl_tensor *vtl_npy_load(const char *path) {
  if (!path) return vtl_error_set(VTL_ERR_ARG, "load: path is NULL"), NULL;
  uint64_t fsize;
  int fd = open_regular("load", path, &fsize);
  if (fd < 0) return NULL;
  vtl_tensor *t = NULL, *tmp = NULL;
  char *hbuf = NULL;
  unsigned char pre[12];
  size_t got = fsize < 12 ? (size_t)fsize : 12;
  uint64_t hlen, pre_len, numel = 1, nbytes = 0, have;
  npy_header h;
  elem_fmt f = FMT_F32;
  bool swap = false, overflow = false, fortran;
  char sb[256];
  int64_t bad;
  vtl_device cpu = {VTL_CPU, 0};
  vtl_dtype dt;
  int e = pread_full(fd, pre, got, 0);
  if (e) { vtl_error_set(VTL_ERR_IO, "load: %s: read failed: %s", path, read_err_text(e)); goto fail; }
  if (memcmp(pre, npy_magic, got < 6 ? got : 6) != 0 || got == 0) {
    vtl_error_set(VTL_ERR_FORMAT, "load: %s: not an .npy file (bad magic bytes)", path);
    goto fail;
  }
  if (got < 10 || (pre[6] >= 2 && got < 12)) {
    vtl_error_set(VTL_ERR_FORMAT, "load: %s: .npy file is truncated (%llu bytes, header incomplete)", path,
                  (unsigned long long)fsize);
    goto fail;
  }
  if (pre[6] == 1) { hlen = ld16(pre + 8, HOST_BIG_ENDIAN); pre_len = 10; }
  else if (pre[6] == 2 || pre[6] == 3) { hlen = ld32(pre + 8, HOST_BIG_ENDIAN); pre_len = 12; }
  else {
    vtl_error_set(VTL_ERR_FORMAT, "load: %s: unsupported .npy format version %d.%d (1.0, 2.0 and 3.0 are supported)",
                  path, pre[6], pre[7]);
    goto fail;
  }
  if (hlen > NPY_MAX_HEADER) {
    vtl_error_set(VTL_ERR_FORMAT, "load: %s: .npy header length %llu is too large", path, (unsigned long long)hlen);
    goto fail;
  }
  if (pre_len + hlen > fsize) {
    vtl_error_set(VTL_ERR_FORMAT, "load: %s: .npy file is truncated (the header needs %llu bytes, the file has %llu)",
                  path, (unsigned long long)(pre_len + hlen), (unsigned long long)fsize);
    goto fail;
  }
  hbuf = malloc((size_t)hlen + 1);
  if (!hbuf) { vtl_error_set(VTL_ERR_OOM, "load: %s: out of memory", path); goto fail; }
  if ((e = pread_full(fd, hbuf, (size_t)hlen, pre_len))) {
    vtl_error_set(VTL_ERR_IO, "load: %s: read failed: %s", path, read_err_text(e));
    goto fail;
  }
  hbuf[hlen] = 0;
  h = (npy_header){.p = hbuf, .end = hbuf + hlen, .path = path};
  if (npy_parse_header(&h) != VTL_OK) goto fail;
  if (npy_descr(path, h.descr, &f, &swap) != VTL_OK) goto fail;
  for (int d = 0; d < h.ndim; d++)
    if (__builtin_mul_overflow(numel, (uint64_t)h.shape[d], &numel)) overflow = true;
  vtl_shape_format(h.shape, h.ndim, sb, sizeof sb);
  if (overflow || numel > (uint64_t)INT64_MAX / 8 || __builtin_mul_overflow(numel, (uint64_t)fmt_info[f].size, &nbytes)) {
    vtl_error_set(VTL_ERR_FORMAT, "load: %s: .npy shape %s is too large", path, sb);
    goto fail;
  }
  have = fsize - pre_len - hlen;
  if (have != nbytes) {
    vtl_error_set(VTL_ERR_FORMAT, have < nbytes
                  ? "load: %s: .npy file is truncated: shape %s of '%s' needs %llu data bytes, the file has %llu"
                  : "load: %s: .npy file has extra bytes: shape %s of '%s' needs %llu data bytes, the file has %llu",
                  path, sb, h.descr, (unsigned long long)nbytes, (unsigned long long)have);
    goto fail;
  }
  dt = fmt_info[f].dt;
  t = vtl_tensor_empty(h.shape, h.ndim, dt, cpu);
  if (!t) { rewrap_error("load", path, "array"); goto fail; }
  fortran = h.fortran && h.ndim > 1;
  if (fortran) {
    int64_t one = (int64_t)numel;
    tmp = vtl_tensor_empty(&one, 1, dt, cpu);
    if (!tmp) { rewrap_error("load", path, "array"); goto fail; }
  }
  if (read_elems("load", path, fd, pre_len + hlen, f, swap, (int64_t)numel, vtl_tensor_data(fortran ? tmp : t), &bad)
      != VTL_OK)
    goto fail;
  if (bad >= 0) {
    vtl_error_set(VTL_ERR_FORMAT, f == FMT_BOOL ? "load: %s: .npy bool array holds a byte other than 0 or 1 at element %lld"
                  : "load: %s: .npy uint64 array holds a value above the i64 maximum at element %lld", path,
                  (long long)bad + 1);
    goto fail;
  }
  if (fortran) fortran_to_c(vtl_tensor_data(t), vtl_tensor_data(tmp), h.shape, h.ndim, vtl_dtype_size(dt));
  vtl_tensor_release(tmp);
  free(hbuf);
  close(fd);
  return t;
fail:
  vtl_tensor_release(t);
  vtl_tensor_release(tmp);
  free(hbuf);
  close(fd);
  return NULL;
}

vtl_status vtl_npy_save(const char *path, vtl_tensor *t) {
  static const char *const descr[VTL_NDTYPES] = {
    [VTL_F32] = "<f4", [VTL_F64] = "<f8", [VTL_F16] = "<f2", [VTL_I64] = "<i8",
    [VTL_I32] = "<i4", [VTL_U8] = "|u1", [VTL_BOOL] = "|b1",
  };
  if (!path) return vtl_error_set(VTL_ERR_ARG, "save: path is NULL");
  if (!t) return vtl_error_set(VTL_ERR_ARG, "save: %s: tensor is NULL", path);
  if ((unsigned)t->dtype >= VTL_NDTYPES || !descr[t->dtype])
    return vtl_error_set(VTL_ERR_ARG, "save: %s: %s has no NumPy dtype; convert with :float() first, or save as "
                         "safetensors", path, t->dtype == VTL_BF16 ? "bf16" : "this dtype");
  vtl_tensor *c = contiguous_cpu(path, NULL, t);
  if (!c) return vtl_error_status();
  sbuf h = {0};
  vtl_status st = VTL_OK;
  atomic_file af = {0};
  unsigned char pre[12];
  sb_str(&h, "{'descr': '");
  sb_str(&h, descr[t->dtype]);
  sb_str(&h, "', 'fortran_order': False, 'shape': (");
  for (int d = 0; d < c->ndim; d++) sb_u64(&h, d ? ", %llu" : "%llu", (unsigned long long)c->shape[d]);
  sb_str(&h, c->ndim == 1 ? ",), }" : "), }");
  /* spaces and a final newline so that the data starts on a 64-byte boundary; format 2.0 only
     when the header does not fit 1.0's 16-bit length */
  size_t pre_len = 10, total = (10 + h.n + 1 + 63) / 64 * 64;
  if (total - pre_len > 65535) { pre_len = 12; total = (12 + h.n + 1 + 63) / 64 * 64; }
  while (!h.oom && pre_len + h.n + 1 < total) sb_str(&h, " ");
  sb_str(&h, "\n");
  if (h.oom) { st = vtl_error_set(VTL_ERR_OOM, "save: %s: out of memory", path); goto done; }
  memcpy(pre, npy_magic, 6);
  pre[6] = pre_len == 10 ? 1 : 2;
  pre[7] = 0;
  for (size_t b = 0; b < pre_len - 8; b++) pre[8 + b] = (unsigned char)((uint64_t)h.n >> (8 * b));
  if ((st = atomic_open(&af, path)) != VTL_OK) goto done;
  if ((st = atomic_write(&af, pre, pre_len)) != VTL_OK) goto done;
  if ((st = atomic_write(&af, h.p, h.n)) != VTL_OK) goto done;
  if ((st = atomic_write_elems(&af, c)) != VTL_OK) goto done;
  st = atomic_commit(&af);
done:
  if (st != VTL_OK) atomic_abort(&af);
  vtl_tensor_release(c);
  free(h.p);
  return st;
}
