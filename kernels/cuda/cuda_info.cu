// Device discovery for `vtl info`: how many CUDA devices this process can see.
#include <cuda_runtime.h>

// The number of visible CUDA devices; 0 when there is no driver, no device, or any error.
extern "C" int vtl_cuda_device_count(void) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the error so later CUDA calls do not see it
    return 0;
  }
  return n;
}
