/* Storage: refcounted buffers, byte accounting, and the OOM retry hook. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "core.h"
#include "backend.h"

static size_t alloc_bytes; /* atomic */
static _Thread_local vtl_oom_hook oom_hook;
static _Thread_local void *oom_ud;

size_t vtl_alloc_bytes(void) { return __atomic_load_n(&alloc_bytes, __ATOMIC_RELAXED); }

void vtl_set_oom_hook(vtl_oom_hook fn, void *ud) { oom_hook = fn; oom_ud = ud; }

static size_t physical_memory(void) {
  long pages = sysconf(_SC_PHYS_PAGES), psize = sysconf(_SC_PAGESIZE);
  return pages > 0 && psize > 0 ? (size_t)pages * (size_t)psize : SIZE_MAX;
}

vtl_storage *vtl_storage_new(size_t nbytes, vtl_device dev) {
  const vtl_backend *be = vtl_backend_get(dev);
  if (!be) return NULL;
  if (dev.type == VTL_CPU && nbytes > physical_memory())
    return vtl_error_set(VTL_ERR_OOM, "cannot allocate %zu bytes: more than the machine's %zu bytes of memory",
                         nbytes, physical_memory()), NULL;
  vtl_storage *s = malloc(sizeof *s);
  if (!s) return vtl_error_set(VTL_ERR_OOM, "out of memory"), NULL;
  size_t n = nbytes ? nbytes : 1;
  void *p = be->alloc(n, dev.index);
  if (!p) { /* free the cache, then let the host collect garbage, and try once more */
    if (be->empty_cache) be->empty_cache(dev.index);
    if (oom_hook) oom_hook(oom_ud);
    if (be->empty_cache) be->empty_cache(dev.index);
    p = be->alloc(n, dev.index);
  }
  if (!p) {
    free(s);
    if (be->memory_stats) {
      size_t used = 0, cached = 0, peak = 0, mallocs = 0;
      char d[32];
      be->memory_stats(dev.index, &used, &cached, &peak, &mallocs);
      vtl_device_format(dev, d, sizeof d);
      return vtl_error_set(VTL_ERR_OOM, "out of memory on %s: cannot allocate %zu bytes (%zu bytes allocated by tensors, "
                           "%zu bytes cached)", d, nbytes, used, cached), NULL;
    }
    return vtl_error_set(VTL_ERR_OOM, "cannot allocate %zu bytes on %s (%zu bytes held by tensors)",
                         nbytes, be->name, vtl_alloc_bytes()), NULL;
  }
  s->refcount = 1;
  s->data = p;
  s->nbytes = nbytes;
  s->device = dev;
  s->version = 0;
  s->pinned = false;
  if (dev.type == VTL_CPU) __atomic_add_fetch(&alloc_bytes, nbytes, __ATOMIC_RELAXED);
  return s;
}

vtl_storage *vtl_storage_new_pinned(size_t nbytes) {
  const vtl_backend *gpu = vtl_backend_get((vtl_device){VTL_CUDA, 0});
  if (!gpu) {
    char why[160];
    snprintf(why, sizeof why, "%s", vtl_error_message());
    return vtl_error_set(VTL_ERR_DEVICE, "pin_memory: page-locked memory needs a CUDA device (%s)", why), NULL;
  }
  if (!gpu->host_alloc) return vtl_error_set(VTL_ERR_DEVICE, "pin_memory: the %s backend has no page-locked memory", gpu->name), NULL;
  vtl_storage *s = malloc(sizeof *s);
  if (!s) return vtl_error_set(VTL_ERR_OOM, "out of memory"), NULL;
  void *p = gpu->host_alloc(nbytes ? nbytes : 1);
  if (!p) {
    free(s);
    return NULL;
  }
  s->refcount = 1;
  s->data = p;
  s->nbytes = nbytes;
  s->device = (vtl_device){VTL_CPU, 0};
  s->version = 0;
  s->pinned = true;
  __atomic_add_fetch(&alloc_bytes, nbytes, __ATOMIC_RELAXED);
  return s;
}

void vtl_storage_retain(vtl_storage *s) { __atomic_add_fetch(&s->refcount, 1, __ATOMIC_RELAXED); }

void vtl_storage_release(vtl_storage *s) {
  if (!s) return;
  if (__atomic_sub_fetch(&s->refcount, 1, __ATOMIC_ACQ_REL) != 0) return;
  const vtl_backend *be = vtl_backend_of_type(s->pinned ? VTL_CUDA : s->device.type);
  if (be && s->pinned) be->host_free(s->data, s->nbytes ? s->nbytes : 1);
  else if (be) be->free(s->data, s->nbytes ? s->nbytes : 1, s->device.index);
  if (s->device.type == VTL_CPU) __atomic_sub_fetch(&alloc_bytes, s->nbytes, __ATOMIC_RELAXED);
  free(s);
}
