// The CUDA backend: per-device compute streams and cuBLAS handles, a caching allocator, copies
// to and from the host, and the backend table registered by vtl_cuda_init.
//
// Allocator: blocks are rounded up to a size class (8 classes per power of two, at least
// 512 bytes) and kept on per-device free lists by class when released. All work of a device
// runs on its one compute stream, so a block handed out again is only touched by work queued
// after the work that used it before. On a failed cudaMalloc the storage layer empties the
// cache, runs the OOM hook (a full Lua GC), empties it again and retries once.
#include <mutex>
#include <unordered_map>
#include <vector>
#include "common.cuh"
#include "nn.cuh"

extern "C" int vtl_cuda_device_count(void); // cuda_info.cu

#define MAX_DEVICES 64

namespace {

struct device_state {
  std::mutex mu;
  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;
  std::unordered_map<size_t, std::vector<void *>> bins; // size class -> free blocks
  size_t allocated = 0, cached = 0, peak = 0;
  size_t mallocs = 0; // cudaMalloc calls (blocks the cache did not have)
  int sms = 0; // multiprocessors, read once
};

device_state devices[MAX_DEVICES];
int device_total = -1; // cached count of visible devices
std::once_flag count_once;
thread_local int current_device = -1;

int count_devices() {
  std::call_once(count_once, [] {
    int n = vtl_cuda_device_count();
    device_total = n > MAX_DEVICES ? MAX_DEVICES : n;
  });
  return device_total;
}

size_t size_class(size_t n) {
  if (n <= 512) return 512;
  int e = 63 - __builtin_clzll((unsigned long long)n);
  size_t step = (size_t)1 << (e >= 3 ? e - 3 : 0);
  if (step < 512) step = 512;
  return (n + step - 1) & ~(step - 1);
}

vtl_status set_device(int dev) {
  if (dev < 0 || dev >= count_devices())
    return vtl_error_set(VTL_ERR_DEVICE, "cuda:%d: no such device (%d visible)", dev, count_devices());
  if (current_device == dev) return VTL_OK;
  cudaError_t e = cudaSetDevice(dev);
  if (e != cudaSuccess) return vtl_cu_error(e, "cudaSetDevice");
  current_device = dev;
  return VTL_OK;
}

} // namespace

vtl_status vtl_cu_error(cudaError_t e, const char *what) {
  const char *msg = cudaGetErrorString(e);
  cudaGetLastError(); // clear a non-sticky error so later calls do not report it again
  if (e == cudaErrorMemoryAllocation) return vtl_error_set(VTL_ERR_OOM, "cuda: out of memory (%s)", what);
  return vtl_error_set(VTL_ERR_DEVICE, "cuda: %s failed: %s", what, msg);
}

cudaStream_t vtl_cu_stream(int dev) {
  if (set_device(dev) != VTL_OK) return nullptr;
  device_state &d = devices[dev];
  std::lock_guard<std::mutex> g(d.mu);
  if (!d.stream) {
    cudaError_t e = cudaStreamCreateWithFlags(&d.stream, cudaStreamNonBlocking);
    if (e != cudaSuccess) { d.stream = nullptr; vtl_cu_error(e, "cudaStreamCreate"); return nullptr; }
  }
  return d.stream;
}

cublasHandle_t vtl_cu_blas(int dev) {
  cudaStream_t s = vtl_cu_stream(dev);
  if (!s) return nullptr;
  device_state &d = devices[dev];
  std::lock_guard<std::mutex> g(d.mu);
  if (!d.blas) {
    cublasStatus_t st = cublasCreate(&d.blas);
    if (st != CUBLAS_STATUS_SUCCESS) {
      d.blas = nullptr;
      vtl_error_set(VTL_ERR_DEVICE, "cuda: cublasCreate failed (status %d)", (int)st);
      return nullptr;
    }
    cublasSetStream(d.blas, s);
    // exact f32 products (no TF32), as the CPU computes them
    cublasSetMathMode(d.blas, CUBLAS_DEFAULT_MATH);
  }
  return d.blas;
}

int vtl_cu_sm_count(int dev) {
  if (dev < 0 || dev >= count_devices()) return 1;
  device_state &d = devices[dev];
  std::lock_guard<std::mutex> g(d.mu);
  if (!d.sms) {
    int n = 0;
    if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || n < 1) {
      cudaGetLastError(); // not sticky; a guess serves as well for sizing grids
      n = 64;
    }
    d.sms = n;
  }
  return d.sms;
}

void *vtl_cu_alloc(size_t n, int dev) {
  if (dev < 0 || dev >= count_devices()) return nullptr;
  size_t r = size_class(n);
  device_state &d = devices[dev];
  {
    std::lock_guard<std::mutex> g(d.mu);
    auto it = d.bins.find(r);
    if (it != d.bins.end() && !it->second.empty()) {
      void *p = it->second.back();
      it->second.pop_back();
      d.cached -= r;
      d.allocated += r;
      if (d.allocated > d.peak) d.peak = d.allocated;
      return p;
    }
  }
  if (set_device(dev) != VTL_OK) return nullptr;
  void *p = nullptr;
  cudaError_t e = cudaMalloc(&p, r);
  if (e != cudaSuccess) {
    cudaGetLastError(); // out of memory is not sticky; clear it
    return nullptr;
  }
  std::lock_guard<std::mutex> g(d.mu);
  d.allocated += r;
  d.mallocs++;
  if (d.allocated > d.peak) d.peak = d.allocated;
  return p;
}

void vtl_cu_free(void *p, size_t n, int dev) {
  if (!p || dev < 0 || dev >= MAX_DEVICES) return;
  size_t r = size_class(n);
  device_state &d = devices[dev];
  std::lock_guard<std::mutex> g(d.mu);
  d.bins[r].push_back(p);
  d.allocated -= r;
  d.cached += r;
}

namespace {

void host_release_idle();

size_t cu_empty_cache(int dev) {
  host_release_idle();
  if (dev < 0 || dev >= count_devices()) return 0;
  device_state &d = devices[dev];
  std::vector<void *> all;
  size_t n;
  {
    std::lock_guard<std::mutex> g(d.mu);
    for (auto &kv : d.bins) all.insert(all.end(), kv.second.begin(), kv.second.end());
    d.bins.clear();
    n = d.cached;
    d.cached = 0;
  }
  if (all.empty() || set_device(dev) != VTL_OK) return n;
  if (d.stream) cudaStreamSynchronize(d.stream); // queued work may still read freed blocks
  for (void *p : all) cudaFree(p);
  cudaGetLastError();
  return n;
}

void *cu_alloc(size_t n, int dev) { return vtl_cu_alloc(n, dev); }
void cu_free(void *p, size_t n, int dev) { vtl_cu_free(p, n, dev); }

vtl_status cu_copy_host(void *dst, const void *src, size_t n, int dev, bool to_device) {
  cudaStream_t s = vtl_cu_stream(dev);
  if (!s) return vtl_error_status();
  cudaError_t e = cudaMemcpyAsync(dst, src, n, to_device ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToHost, s);
  if (e != cudaSuccess) return vtl_cu_error(e, to_device ? "copy to the device" : "copy to the host");
  // the host buffer may be freed or read as soon as this returns
  e = cudaStreamSynchronize(s);
  if (e != cudaSuccess) return vtl_cu_error(e, to_device ? "copy to the device" : "copy to the host");
  return VTL_OK;
}

// ---- page-locked host memory ----
// Blocks come from cudaHostAlloc, rounded to the device allocator's size classes, and go back
// to a free list when released. Each block remembers an event recorded after the last
// asynchronous copy from it; a block is handed out again only once that event has completed, so
// a queued copy never reads bytes written for the next batch.
struct host_block {
  size_t n;
  cudaEvent_t ev = nullptr; // after the last queued copy from the block (or none)
};
std::mutex host_mu;
std::unordered_map<void *, host_block> host_blocks;          // every live or cached block
std::unordered_map<size_t, std::vector<void *>> host_bins;  // size class -> cached blocks

bool host_block_idle(const host_block &b) { return !b.ev || cudaEventQuery(b.ev) == cudaSuccess; }

void *cu_host_alloc(size_t n) {
  size_t c = size_class(n);
  {
    std::lock_guard<std::mutex> g(host_mu);
    auto it = host_bins.find(c);
    if (it != host_bins.end())
      for (size_t i = 0; i < it->second.size(); i++) {
        void *p = it->second[i];
        if (!host_block_idle(host_blocks[p])) continue;
        it->second.erase(it->second.begin() + (long)i);
        return p;
      }
  }
  void *p = nullptr;
  cudaError_t e = cudaHostAlloc(&p, c, cudaHostAllocDefault);
  if (e != cudaSuccess) {
    cudaGetLastError();
    vtl_error_set(VTL_ERR_OOM, "pin_memory: cannot page-lock %zu bytes of host memory: %s", c, cudaGetErrorString(e));
    return nullptr;
  }
  std::lock_guard<std::mutex> g(host_mu);
  host_blocks[p] = host_block{c, nullptr};
  return p;
}

void cu_host_free(void *p, size_t n) {
  std::lock_guard<std::mutex> g(host_mu);
  auto it = host_blocks.find(p);
  if (it == host_blocks.end()) return;
  host_bins[it->second.n].push_back(p);
}

// frees the cached page-locked blocks no queued copy reads any more
void host_release_idle() {
  std::lock_guard<std::mutex> g(host_mu);
  for (auto &kv : host_bins) {
    std::vector<void *> keep;
    for (void *p : kv.second) {
      host_block &b = host_blocks[p];
      if (!host_block_idle(b)) { keep.push_back(p); continue; }
      if (b.ev) cudaEventDestroy(b.ev);
      cudaFreeHost(p);
      host_blocks.erase(p);
    }
    kv.second.swap(keep);
  }
  cudaGetLastError();
}

vtl_status cu_copy_host_async(void *dst, const void *src, size_t n, int dev, void *block) {
  cudaStream_t s = vtl_cu_stream(dev);
  if (!s) return vtl_error_status();
  cudaError_t e = cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, s);
  if (e != cudaSuccess) return vtl_cu_error(e, "copy to the device");
  std::lock_guard<std::mutex> g(host_mu);
  auto it = host_blocks.find(block);
  if (it == host_blocks.end()) { // not one of ours: wait, as a plain copy does
    e = cudaStreamSynchronize(s);
    return e == cudaSuccess ? VTL_OK : vtl_cu_error(e, "copy to the device");
  }
  if (!it->second.ev) {
    e = cudaEventCreateWithFlags(&it->second.ev, cudaEventDisableTiming);
    if (e != cudaSuccess) { it->second.ev = nullptr; return vtl_cu_error(e, "copy to the device"); }
  }
  e = cudaEventRecord(it->second.ev, s);
  return e == cudaSuccess ? VTL_OK : vtl_cu_error(e, "copy to the device");
}

vtl_status cu_synchronize(int dev) {
  cudaStream_t s = vtl_cu_stream(dev);
  if (!s) return vtl_error_status();
  cudaError_t e = cudaStreamSynchronize(s);
  return e == cudaSuccess ? VTL_OK : vtl_cu_error(e, "synchronize");
}

void cu_reset_peak(int dev) {
  if (dev < 0 || dev >= MAX_DEVICES) return;
  device_state &d = devices[dev];
  std::lock_guard<std::mutex> g(d.mu);
  d.peak = d.allocated;
}

void cu_memory_stats(int dev, size_t *allocated, size_t *cached, size_t *peak, size_t *mallocs) {
  *allocated = *cached = *peak = *mallocs = 0;
  if (dev < 0 || dev >= MAX_DEVICES) return;
  device_state &d = devices[dev];
  std::lock_guard<std::mutex> g(d.mu);
  *allocated = d.allocated;
  *cached = d.cached;
  *peak = d.peak;
  *mallocs = d.mallocs;
}

vtl_backend cuda_backend;

} // namespace

extern "C" void vtl_cuda_init(void) {
  static std::once_flag once;
  std::call_once(once, [] {
    vtl_backend &b = cuda_backend;
    b.name = "cuda";
    b.alloc = cu_alloc;
    b.free = cu_free;
    b.empty_cache = cu_empty_cache;
    b.unary = vtl_cu_unary;
    b.binary = vtl_cu_binary;
    b.where = vtl_cu_where;
    b.lerp = vtl_cu_lerp;
    b.fill = vtl_cu_fill;
    b.reduce = vtl_cu_reduce;
    b.cumsum = vtl_cu_cumsum;
    b.matmul = vtl_cu_matmul;
    b.gather = vtl_cu_gather;
    b.scatter = vtl_cu_scatter;
    b.sort = vtl_cu_sort;
    b.random = vtl_cu_random;
    b.nonzero_flat = vtl_cu_nonzero_flat;
    b.fused = vtl_cu_fused;
    b.matmul_dtypes = 1u << VTL_F32 | 1u << VTL_F64 | 1u << VTL_F16 | 1u << VTL_BF16 | 1u << VTL_I64;
    b.device_count = count_devices;
    b.optim_multi = vtl_cu_optim_multi;
    b.copy_host = cu_copy_host;
    b.copy_host_async = cu_copy_host_async;
    b.host_alloc = cu_host_alloc;
    b.host_free = cu_host_free;
    b.synchronize = cu_synchronize;
    b.memory_stats = cu_memory_stats;
    b.reset_peak = cu_reset_peak;
    b.nn = &vtl_cu_nn_backend;
    vtl_backend_register(VTL_CUDA, &cuda_backend);
  });
}
