// Host stand-ins for the CUDA names that vtl's kernel headers (kernels/cuda/device.cuh,
// flash_kernels.cuh, norm_kernels.cuh) use, so their device code runs on a machine without a
// GPU: each thread of a block is a host thread; blocks run one at a time, so a kernel's static
// `__shared__` arrays are the running block's shared memory; __syncthreads and __syncwarp are
// barriers of the block and of its warp; __shfl_xor_sync exchanges through the warp's slots.
// Meant for checking a kernel's indexing and synchronisation on small inputs, not for speed.
#ifndef VTL_TESTS_EMU_H
#define VTL_TESTS_EMU_H
#include <barrier>
#include <cstdint>
#include <cstring>
#include <math.h>
#include <memory>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(n)
#define __shared__ static

struct emu_dim {
  unsigned x = 0, y = 0, z = 0;
};
thread_local emu_dim threadIdx, blockIdx;
inline emu_dim blockDim, gridDim;
struct uint4 {
  unsigned x, y, z, w;
};
struct float4 {
  float x, y, z, w;
};
inline uint4 make_uint4(unsigned a, unsigned b, unsigned c, unsigned d) { return {a, b, c, d}; }

thread_local std::barrier<> *emu_block_barrier, *emu_warp_barrier;
thread_local double *emu_warp_slots;
inline void __syncthreads() { emu_block_barrier->arrive_and_wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu_warp_barrier->arrive_and_wait(); }
template <class T> T __shfl_xor_sync(unsigned, T v, int o) {
  unsigned lane = (threadIdx.y * blockDim.x + threadIdx.x) & 31;
  emu_warp_slots[lane] = (double)v;
  __syncwarp();
  T r = (T)emu_warp_slots[lane ^ (unsigned)o];
  __syncwarp();
  return r;
}

// Runs body for every block of grid (x, y) with block (x, y) threads (a multiple of 32), one
// block at a time, each thread on its own host thread.
template <class F> void emu_launch(emu_dim grid, emu_dim block, F body) {
  gridDim = grid;
  blockDim = block;
  unsigned n = block.x * block.y;
  for (unsigned by = 0; by < grid.y; by++)
    for (unsigned bx = 0; bx < grid.x; bx++) {
      std::barrier<> bb(n);
      std::vector<std::unique_ptr<std::barrier<>>> wb;
      for (unsigned w = 0; w < n / 32; w++) wb.emplace_back(new std::barrier<>(32));
      std::vector<double> slots(n);
      std::vector<std::thread> ts;
      for (unsigned t = 0; t < n; t++)
        ts.emplace_back([&, t] {
          threadIdx.x = t % block.x;
          threadIdx.y = t / block.x;
          blockIdx.x = bx;
          blockIdx.y = by;
          emu_block_barrier = &bb;
          emu_warp_barrier = wb[t / 32].get();
          emu_warp_slots = &slots[(t / 32) * 32];
          body();
        });
      for (auto &t : ts) t.join();
    }
}

#endif
