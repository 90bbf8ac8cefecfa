/*
 * vtl core types: status and errors, dtypes, devices, storage, tensors.
 *
 * Conventions of the C core:
 *   - every fallible function returns a vtl_status (VTL_OK == 0) or NULL, and on failure
 *     leaves a message in the calling thread's error buffer (vtl_error_message());
 *   - messages begin with the name of the operation ("matmul: ...");
 *   - dims and indices are 0-based here; the Lua binding converts from 1-based;
 *   - a function that returns a new tensor returns an owned reference.
 */
#ifndef VTL_CORE_H
#define VTL_CORE_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

#define VTL_VERSION "0.1.0"
#define VTL_MAX_DIMS 16

typedef enum {
  VTL_OK = 0,
  VTL_ERR_ARG,    /* bad argument: shape, dtype, index, value */
  VTL_ERR_OOM,    /* allocation failed */
  VTL_ERR_IO,     /* file could not be read or written */
  VTL_ERR_FORMAT, /* file contents malformed */
  VTL_ERR_DEVICE, /* device not available or mixed devices */
} vtl_status;

/* Error buffer, one per thread. vtl_error_set returns its status for `return vtl_error_set(..)`. */
vtl_status vtl_error_set(vtl_status st, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
const char *vtl_error_message(void);
vtl_status vtl_error_status(void);

/* ---- dtypes ---- */
typedef enum {
  VTL_F32 = 0, VTL_F64, VTL_F16, VTL_BF16, VTL_I64, VTL_I32, VTL_U8, VTL_BOOL, VTL_NDTYPES
} vtl_dtype;

size_t vtl_dtype_size(vtl_dtype dt);
const char *vtl_dtype_name(vtl_dtype dt);           /* "f32", ... */
int vtl_dtype_from_name(const char *name, vtl_dtype *out); /* accepts f32/float32/float, ... */
bool vtl_dtype_is_float(vtl_dtype dt);
bool vtl_dtype_is_int(vtl_dtype dt);  /* i64, i32, u8 (not bool) */
/* Result dtype of a binary op between two tensors (PyTorch rules for same-category dims). */
vtl_dtype vtl_dtype_promote(vtl_dtype a, vtl_dtype b);
/* Result dtype of tensor op Lua number: a float number lifts an integer/bool tensor to f32. */
vtl_dtype vtl_dtype_promote_scalar(vtl_dtype t, bool scalar_is_float);

float vtl_f16_to_f32(uint16_t h);
uint16_t vtl_f32_to_f16(float f);
float vtl_bf16_to_f32(uint16_t h);
uint16_t vtl_f32_to_bf16(float f);

/* ---- devices ---- */
typedef enum { VTL_CPU = 0, VTL_CUDA = 1 } vtl_device_type;
typedef struct { vtl_device_type type; int index; } vtl_device;
int vtl_device_parse(const char *s, vtl_device *out); /* "cpu", "cuda", "cuda:1" */
void vtl_device_format(vtl_device d, char *buf, size_t n);
bool vtl_device_eq(vtl_device a, vtl_device b);

/* ---- storage: a refcounted byte buffer on one device ---- */
typedef struct vtl_storage {
  int refcount; /* atomic */
  void *data;
  size_t nbytes;
  vtl_device device;
  uint32_t version; /* bumped by every in-place write (autograd checks saved tensors) */
  bool pinned;      /* host memory page-locked by a GPU backend (its host_alloc) */
} vtl_storage;

vtl_storage *vtl_storage_new(size_t nbytes, vtl_device dev);
/* Page-locked host memory from the CUDA backend, or NULL with the error set ("pin_memory: ...
   no CUDA device"). */
vtl_storage *vtl_storage_new_pinned(size_t nbytes);
void vtl_storage_retain(vtl_storage *s);
void vtl_storage_release(vtl_storage *s);

/* Bytes currently held by storages on the CPU, for GC pressure and statistics. */
size_t vtl_alloc_bytes(void);
/* Bytes of freed CPU blocks the caching allocator keeps for reuse (kernels/cpu/alloc.c), and
   handing them all back to the system (returns the bytes freed). */
size_t vtl_cpu_cached_bytes(void);
size_t vtl_cpu_empty_cache(void);
/* Called (on the allocating thread only) when an allocation fails, before one retry;
   the Lua binding uses it to run a full garbage collection. */
typedef void (*vtl_oom_hook)(void *ud);
void vtl_set_oom_hook(vtl_oom_hook fn, void *ud);

/* ---- tensor: a strided view of a storage ---- */
struct vtl_autograd_meta;

typedef struct vtl_tensor {
  int refcount; /* atomic */
  vtl_dtype dtype;
  int ndim;
  int64_t shape[VTL_MAX_DIMS];
  int64_t strides[VTL_MAX_DIMS]; /* in elements */
  int64_t offset;                /* in elements */
  vtl_storage *storage;
  struct vtl_autograd_meta *ag;  /* autograd state, NULL when unused */
} vtl_tensor;

vtl_tensor *vtl_tensor_empty(const int64_t *shape, int ndim, vtl_dtype dt, vtl_device dev);
vtl_tensor *vtl_tensor_zeros(const int64_t *shape, int ndim, vtl_dtype dt, vtl_device dev);
vtl_tensor *vtl_tensor_empty_like(const vtl_tensor *t);
/* A new tensor header over t's storage (shares data), retaining the storage. */
vtl_tensor *vtl_tensor_view_of(const vtl_tensor *t, const int64_t *shape, const int64_t *strides,
                               int ndim, int64_t offset);
vtl_tensor *vtl_tensor_retain(vtl_tensor *t);
void vtl_tensor_release(vtl_tensor *t);

int64_t vtl_tensor_numel(const vtl_tensor *t);
bool vtl_tensor_is_contiguous(const vtl_tensor *t);
/* 4-D (N,C,H,W) whose memory is (N,H,W,C) without gaps (dims of size 1 may have any stride) */
bool vtl_tensor_is_channels_last(const vtl_tensor *t);
/* a new (N,C,H,W) tensor (shape[4]) in channels-last layout */
vtl_tensor *vtl_tensor_empty_channels_last(const int64_t *shape, vtl_dtype dt, vtl_device dev);
/* channels-last and not also contiguous: an op on t lays its output out the same way */
bool vtl_tensor_keeps_channels_last(const vtl_tensor *t);
/* A new uninitialised tensor of shape and dtype on like's device: channels-last when like keeps
   that layout and the shape is 4-D, else contiguous. */
vtl_tensor *vtl_tensor_empty_as(const vtl_tensor *like, const int64_t *shape, int ndim, vtl_dtype dt);
static inline void *vtl_tensor_data(const vtl_tensor *t) {
  return (char *)t->storage->data + t->offset * (int64_t)vtl_dtype_size(t->dtype);
}
static inline vtl_device vtl_tensor_device(const vtl_tensor *t) { return t->storage->device; }
/* Checks a shape (non-negative dims, numel * elemsize fits) and returns numel or -1. */
int64_t vtl_shape_numel(const int64_t *shape, int ndim, size_t elemsize, const char *op);
void vtl_contiguous_strides(const int64_t *shape, int ndim, int64_t *strides);
/* "{2,3,4}" */
void vtl_shape_format(const int64_t *shape, int ndim, char *buf, size_t n);

/* t on device dev: t itself (retained) when it is there already, else a contiguous copy. */
vtl_tensor *vtl_tensor_to_device(vtl_tensor *t, vtl_device dev);
/* The same, but a copy from page-locked host memory to a GPU is only queued (non_blocking):
   work on the device sees it; the host must not write into t until the device has run it. */
vtl_tensor *vtl_tensor_to_device_async(vtl_tensor *t, vtl_device dev);
/* A contiguous copy of a CPU tensor in page-locked host memory (t itself when it is already). */
vtl_tensor *vtl_tensor_pin_memory(vtl_tensor *t);
/* VTL_OK when t's data lives in host memory; otherwise sets and returns an error
   "<op>: GPU tensors are not supported yet; call :cpu()". For code that reads or writes
   tensor bytes on the host. */
vtl_status vtl_require_cpu(const char *op, const vtl_tensor *t);
/* "<op>: tensors are on different devices (cpu and cuda:0)" when a and b differ (NULLs pass). */
vtl_status vtl_check_same_device(const char *op, const vtl_tensor *a, const vtl_tensor *b);

/* Reads element i (in row-major logical order) as double / writes one; any dtype; CPU tensors. */
double vtl_tensor_get_flat(const vtl_tensor *t, int64_t i);
double vtl_load_as_double(const void *p, vtl_dtype dt);
void vtl_store_from_double(void *p, vtl_dtype dt, double v);
int64_t vtl_load_as_int(const void *p, vtl_dtype dt);

/* Threads: one OpenMP pool shared with the BLAS library. */
void vtl_set_num_threads(int n);
int vtl_get_num_threads(void);

double vtl_clock(void);

#endif
