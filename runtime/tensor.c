/* Tensors: headers over storages, shapes and strides, devices, backend registry, threads. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <omp.h>
#include "core.h"
#include "backend.h"
#include "ops.h"

/* ---- devices and backends ---- */
static const vtl_backend *backends[2] = {&vtl_cpu_backend, NULL};

void vtl_backend_register(vtl_device_type type, const vtl_backend *be) { backends[type] = be; }

const vtl_backend *vtl_backend_of_type(vtl_device_type type) {
  return (unsigned)type < 2 ? backends[type] : NULL;
}

const vtl_backend *vtl_backend_get(vtl_device dev) {
  if (dev.type == VTL_CPU) return backends[VTL_CPU];
  if (dev.type != VTL_CUDA) return vtl_error_set(VTL_ERR_DEVICE, "unknown device type %d", (int)dev.type), NULL;
  const vtl_backend *be = backends[VTL_CUDA];
  if (!be) return vtl_error_set(VTL_ERR_DEVICE, "cuda: this build has no CUDA backend"), NULL;
  int n = be->device_count ? be->device_count() : 0;
  if (n <= 0) return vtl_error_set(VTL_ERR_DEVICE, "cuda: no CUDA device is available"), NULL;
  if (dev.index < 0 || dev.index >= n)
    return vtl_error_set(VTL_ERR_DEVICE, "cuda:%d: no such device (%d CUDA device%s visible)", dev.index, n,
                         n == 1 ? "" : "s"), NULL;
  return be;
}

int vtl_device_parse(const char *s, vtl_device *out) {
  if (strcmp(s, "cpu") == 0) { *out = (vtl_device){VTL_CPU, 0}; return 1; }
  if (strncmp(s, "cuda", 4) == 0) {
    if (s[4] == 0) { *out = (vtl_device){VTL_CUDA, 0}; return 1; }
    if (s[4] == ':') {
      char *end;
      long i = strtol(s + 5, &end, 10);
      if (end != s + 5 && *end == 0 && i >= 0 && i < 1024) { *out = (vtl_device){VTL_CUDA, (int)i}; return 1; }
    }
  }
  return 0;
}

void vtl_device_format(vtl_device d, char *buf, size_t n) {
  if (d.type == VTL_CPU) snprintf(buf, n, "cpu");
  else snprintf(buf, n, "cuda:%d", d.index);
}

bool vtl_device_eq(vtl_device a, vtl_device b) { return a.type == b.type && a.index == b.index; }

/* ---- shapes ---- */
int64_t vtl_shape_numel(const int64_t *shape, int ndim, size_t elemsize, const char *op) {
  if (ndim < 0 || ndim > VTL_MAX_DIMS)
    return vtl_error_set(VTL_ERR_ARG, "%s: %d dimensions (at most %d supported)", op, ndim, VTL_MAX_DIMS), -1;
  int64_t n = 1;
  const int64_t limit = INT64_MAX / (int64_t)(elemsize ? elemsize : 1);
  for (int i = 0; i < ndim; i++) {
    if (shape[i] < 0)
      return vtl_error_set(VTL_ERR_ARG, "%s: negative size %lld in dimension %d", op, (long long)shape[i], i + 1), -1;
    if (shape[i] && n > limit / shape[i]) {
      char buf[256];
      vtl_shape_format(shape, ndim, buf, sizeof buf);
      return vtl_error_set(VTL_ERR_ARG, "%s: shape %s is too large", op, buf), -1;
    }
    n *= shape[i];
  }
  return n;
}

void vtl_contiguous_strides(const int64_t *shape, int ndim, int64_t *strides) {
  int64_t s = 1;
  for (int i = ndim - 1; i >= 0; i--) { strides[i] = s; s *= shape[i] > 1 ? shape[i] : 1; }
}

void vtl_shape_format(const int64_t *shape, int ndim, char *buf, size_t n) {
  size_t k = (size_t)snprintf(buf, n, "{");
  for (int i = 0; i < ndim && k < n; i++)
    k += (size_t)snprintf(buf + k, n - k, i ? ",%lld" : "%lld", (long long)shape[i]);
  if (k < n) snprintf(buf + k, n - k, "}");
}

/* ---- tensors ---- */
vtl_tensor *vtl_tensor_empty(const int64_t *shape, int ndim, vtl_dtype dt, vtl_device dev) {
  int64_t numel = vtl_shape_numel(shape, ndim, vtl_dtype_size(dt), "empty");
  if (numel < 0) return NULL;
  vtl_tensor *t = calloc(1, sizeof *t);
  if (!t) return vtl_error_set(VTL_ERR_OOM, "out of memory"), NULL;
  t->storage = vtl_storage_new((size_t)numel * vtl_dtype_size(dt), dev);
  if (!t->storage) { free(t); return NULL; }
  t->refcount = 1;
  t->dtype = dt;
  t->ndim = ndim;
  if (ndim) memcpy(t->shape, shape, (size_t)ndim * sizeof *shape);
  vtl_contiguous_strides(shape, ndim, t->strides);
  return t;
}

vtl_tensor *vtl_tensor_zeros(const int64_t *shape, int ndim, vtl_dtype dt, vtl_device dev) {
  vtl_tensor *t = vtl_tensor_empty(shape, ndim, dt, dev);
  if (t && vtl_backend_get(dev)->fill(t, 0) != VTL_OK) { vtl_tensor_release(t); return NULL; }
  return t;
}

vtl_tensor *vtl_tensor_empty_like(const vtl_tensor *t) {
  return vtl_tensor_empty(t->shape, t->ndim, t->dtype, t->storage->device);
}

vtl_tensor *vtl_tensor_view_of(const vtl_tensor *t, const int64_t *shape, const int64_t *strides,
                               int ndim, int64_t offset) {
  vtl_tensor *v = calloc(1, sizeof *v);
  if (!v) return vtl_error_set(VTL_ERR_OOM, "out of memory"), NULL;
  v->refcount = 1;
  v->dtype = t->dtype;
  v->ndim = ndim;
  if (ndim) {
    memcpy(v->shape, shape, (size_t)ndim * sizeof *shape);
    memcpy(v->strides, strides, (size_t)ndim * sizeof *strides);
  }
  v->offset = offset;
  v->storage = t->storage;
  vtl_storage_retain(t->storage);
  return v;
}

vtl_tensor *vtl_tensor_retain(vtl_tensor *t) {
  __atomic_add_fetch(&t->refcount, 1, __ATOMIC_RELAXED);
  return t;
}

void vtl_autograd_meta_free(struct vtl_autograd_meta *m) __attribute__((weak));

void vtl_tensor_release(vtl_tensor *t) {
  if (!t) return;
  if (__atomic_sub_fetch(&t->refcount, 1, __ATOMIC_ACQ_REL) != 0) return;
  if (t->ag && vtl_autograd_meta_free) vtl_autograd_meta_free(t->ag);
  vtl_storage_release(t->storage);
  free(t);
}

int64_t vtl_tensor_numel(const vtl_tensor *t) {
  int64_t n = 1;
  for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
  return n;
}

bool vtl_tensor_is_contiguous(const vtl_tensor *t) {
  int64_t s = 1;
  for (int i = t->ndim - 1; i >= 0; i--) {
    if (t->shape[i] == 1) continue;
    if (t->strides[i] != s) return false;
    s *= t->shape[i];
  }
  return true;
}

bool vtl_tensor_is_channels_last(const vtl_tensor *t) {
  if (t->ndim != 4) return false;
  static const int order[4] = {1, 3, 2, 0}; /* C, W, H, N: innermost first */
  int64_t s = 1;
  for (int k = 0; k < 4; k++) {
    int i = order[k];
    if (t->shape[i] == 1) continue;
    if (t->strides[i] != s) return false;
    s *= t->shape[i];
  }
  return true;
}

vtl_tensor *vtl_tensor_empty_channels_last(const int64_t *shape, vtl_dtype dt, vtl_device dev) {
  int64_t nhwc[4] = {shape[0], shape[2], shape[3], shape[1]};
  vtl_tensor *t = vtl_tensor_empty(nhwc, 4, dt, dev);
  if (!t) return NULL;
  int64_t st[4] = {shape[2] * shape[3] * shape[1], 1, shape[3] * shape[1], shape[1]};
  vtl_tensor *v = vtl_tensor_view_of(t, shape, st, 4, 0);
  vtl_tensor_release(t);
  return v;
}

bool vtl_tensor_keeps_channels_last(const vtl_tensor *t) {
  return t->ndim == 4 && vtl_tensor_is_channels_last(t) && !vtl_tensor_is_contiguous(t);
}

vtl_tensor *vtl_tensor_empty_as(const vtl_tensor *like, const int64_t *shape, int ndim, vtl_dtype dt) {
  if (ndim == 4 && vtl_tensor_keeps_channels_last(like))
    return vtl_tensor_empty_channels_last(shape, dt, vtl_tensor_device(like));
  return vtl_tensor_empty(shape, ndim, dt, vtl_tensor_device(like));
}

double vtl_load_as_double(const void *p, vtl_dtype dt) {
  switch (dt) {
  case VTL_F32: return *(const float *)p;
  case VTL_F64: return *(const double *)p;
  case VTL_F16: return vtl_f16_to_f32(*(const uint16_t *)p);
  case VTL_BF16: return vtl_bf16_to_f32(*(const uint16_t *)p);
  case VTL_I64: return (double)*(const int64_t *)p;
  case VTL_I32: return *(const int32_t *)p;
  case VTL_U8: return *(const uint8_t *)p;
  case VTL_BOOL: return *(const uint8_t *)p != 0;
  default: return 0;
  }
}

int64_t vtl_load_as_int(const void *p, vtl_dtype dt) {
  switch (dt) {
  case VTL_I64: return *(const int64_t *)p;
  case VTL_I32: return *(const int32_t *)p;
  case VTL_U8: return *(const uint8_t *)p;
  case VTL_BOOL: return *(const uint8_t *)p != 0;
  default: return (int64_t)vtl_load_as_double(p, dt);
  }
}

void vtl_store_from_double(void *p, vtl_dtype dt, double v) {
  switch (dt) {
  case VTL_F32: *(float *)p = (float)v; break;
  case VTL_F64: *(double *)p = v; break;
  case VTL_F16: *(uint16_t *)p = vtl_f32_to_f16((float)v); break;
  case VTL_BF16: *(uint16_t *)p = vtl_f32_to_bf16((float)v); break;
  case VTL_I64: *(int64_t *)p = v != v ? 0 : v >= 9.2233720368547758e18 ? INT64_MAX : v <= -9.2233720368547758e18 ? INT64_MIN : (int64_t)v; break;
  case VTL_I32: *(int32_t *)p = (int32_t)(int64_t)(v != v ? 0 : v > 4e18 ? 4e18 : v < -4e18 ? -4e18 : v); break;
  case VTL_U8: *(uint8_t *)p = (uint8_t)(int64_t)(v != v ? 0 : v > 4e18 ? 4e18 : v < -4e18 ? -4e18 : v); break;
  case VTL_BOOL: *(uint8_t *)p = v != 0; break;
  default: break;
  }
}

double vtl_tensor_get_flat(const vtl_tensor *t, int64_t i) {
  int64_t off = t->offset;
  for (int d = t->ndim - 1; d >= 0; d--) {
    off += (i % t->shape[d]) * t->strides[d];
    i /= t->shape[d];
  }
  return vtl_load_as_double((const char *)t->storage->data + off * (int64_t)vtl_dtype_size(t->dtype), t->dtype);
}

/* ---- devices of tensors ---- */
vtl_status vtl_require_cpu(const char *op, const vtl_tensor *t) {
  if (!t || vtl_tensor_device(t).type == VTL_CPU) return VTL_OK;
  return vtl_error_set(VTL_ERR_DEVICE, "%s: GPU tensors are not supported yet; call :cpu()", op);
}

const vtl_nn_backend *vtl_nn_backend_of(const char *op, const vtl_tensor *t) {
  vtl_device dev = vtl_tensor_device(t);
  const vtl_backend *be = vtl_backend_get(dev);
  if (!be) return NULL;
  if (!be->nn) {
    char d[32];
    vtl_device_format(dev, d, sizeof d);
    return vtl_error_set(VTL_ERR_DEVICE, "%s: not supported on %s tensors yet; call :cpu()", op, d), NULL;
  }
  return be->nn;
}

vtl_status vtl_check_same_device(const char *op, const vtl_tensor *a, const vtl_tensor *b) {
  if (!a || !b || vtl_device_eq(vtl_tensor_device(a), vtl_tensor_device(b))) return VTL_OK;
  char da[32], db[32];
  vtl_device_format(vtl_tensor_device(a), da, sizeof da);
  vtl_device_format(vtl_tensor_device(b), db, sizeof db);
  return vtl_error_set(VTL_ERR_DEVICE, "%s: tensors are on different devices (%s and %s)", op, da, db);
}

/* Bytes of a contiguous tensor src copied into a new tensor on dev; one side is the host.
   async: a copy from page-locked memory to a GPU is only queued. */
static vtl_tensor *copy_across(const vtl_tensor *src, vtl_device dev, bool async) {
  vtl_device sd = vtl_tensor_device(src);
  const vtl_backend *gpu = vtl_backend_get(dev.type == VTL_CPU ? sd : dev);
  if (!gpu) return NULL;
  if (!gpu->copy_host) return vtl_error_set(VTL_ERR_DEVICE, "to: the %s backend cannot copy to or from the host", gpu->name), NULL;
  vtl_tensor *t = vtl_tensor_empty(src->shape, src->ndim, src->dtype, dev);
  if (!t) return NULL;
  size_t n = (size_t)vtl_tensor_numel(src) * vtl_dtype_size(src->dtype);
  bool queue = async && dev.type != VTL_CPU && src->storage->pinned && gpu->copy_host_async;
  vtl_status st = n == 0 ? VTL_OK
                  : dev.type == VTL_CPU ? gpu->copy_host(vtl_tensor_data(t), vtl_tensor_data(src), n, sd.index, false)
                  : queue ? gpu->copy_host_async(vtl_tensor_data(t), vtl_tensor_data(src), n, dev.index, src->storage->data)
                          : gpu->copy_host(vtl_tensor_data(t), vtl_tensor_data(src), n, dev.index, true);
  if (st != VTL_OK) { vtl_tensor_release(t); return NULL; }
  return t;
}

static vtl_tensor *to_device(vtl_tensor *t, vtl_device dev, bool async) {
  vtl_device sd = vtl_tensor_device(t);
  if (vtl_device_eq(sd, dev)) return vtl_tensor_retain(t);
  if (!vtl_backend_get(dev)) return NULL;
  vtl_tensor *c = vtl_op_contiguous(t);
  if (!c) return NULL;
  vtl_tensor *r;
  if (sd.type != VTL_CPU && dev.type != VTL_CPU) { /* between two GPUs: through the host */
    vtl_tensor *h = copy_across(c, (vtl_device){VTL_CPU, 0}, false);
    r = h ? copy_across(h, dev, false) : NULL;
    vtl_tensor_release(h);
  } else {
    r = copy_across(c, dev, async);
  }
  vtl_tensor_release(c);
  return r;
}

vtl_tensor *vtl_tensor_to_device(vtl_tensor *t, vtl_device dev) { return to_device(t, dev, false); }
vtl_tensor *vtl_tensor_to_device_async(vtl_tensor *t, vtl_device dev) { return to_device(t, dev, true); }

vtl_tensor *vtl_tensor_pin_memory(vtl_tensor *t) {
  if (vtl_tensor_device(t).type != VTL_CPU) {
    char d[32];
    vtl_device_format(vtl_tensor_device(t), d, sizeof d);
    return vtl_error_set(VTL_ERR_ARG, "pin_memory: the tensor is on %s; only host tensors can be pinned", d), NULL;
  }
  if (t->storage->pinned && vtl_tensor_is_contiguous(t)) return vtl_tensor_retain(t);
  size_t n = (size_t)vtl_tensor_numel(t) * vtl_dtype_size(t->dtype);
  vtl_storage *s = vtl_storage_new_pinned(n);
  if (!s) return NULL;
  int64_t st[VTL_MAX_DIMS];
  vtl_contiguous_strides(t->shape, t->ndim, st);
  vtl_tensor h = {.storage = s, .dtype = t->dtype, .ndim = t->ndim};
  memcpy(h.shape, t->shape, sizeof h.shape);
  vtl_tensor *r = vtl_tensor_view_of(&h, t->shape, st, t->ndim, 0);
  vtl_storage_release(s);
  if (r && vtl_op_copy_(r, t) != VTL_OK) {
    vtl_tensor_release(r);
    return NULL;
  }
  return r;
}

/* ---- threads and time ---- */
void vtl_set_num_threads(int n) {
  void openblas_set_num_threads(int);
  if (n < 1) n = 1;
  omp_set_num_threads(n);
  openblas_set_num_threads(n);
}

int vtl_get_num_threads(void) { return omp_get_max_threads(); }

double vtl_clock(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}
