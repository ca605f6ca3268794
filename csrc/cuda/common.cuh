// Shared by every CUDA kernel file: error checking, the stream to launch on, scratch memory.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>

#include "../core/device.h"
#include "../core/error.h"

namespace convnet::cuda {

// Each host thread launches on its own per-thread default stream, so two towers
// driven from two threads run concurrently even on one GPU.
inline cudaStream_t stream() { return cudaStreamPerThread; }

inline void check(cudaError_t e, const char* what, const char* file, int line) {
  if (e != cudaSuccess) {
    cudaGetLastError();  // clear the sticky-free error so the next op starts clean
    throw ::convnet::DeviceError(::convnet::detail::message("CUDA error in ", what, ": ", cudaGetErrorString(e),
                                                            " (", file, ":", line, ")"));
  }
}

inline unsigned blocks_for(long long n, int threads, int max_blocks = 65535 * 8) {
  long long b = (n + threads - 1) / threads;
  if (b < 1) b = 1;
  return (unsigned)(b < max_blocks ? b : max_blocks);
}

}  // namespace convnet::cuda

#define CUDA_CHECK(call) ::convnet::cuda::check((call), #call, __FILE__, __LINE__)
// After every <<<...>>>: catches bad launch configurations at once.
#define CUDA_CHECK_LAUNCH(name) ::convnet::cuda::check(cudaGetLastError(), "launch of " name, __FILE__, __LINE__)

namespace convnet::cuda {

// Scratch on the current device, returned to the caching allocator when it goes out of scope
// (stream-ordered: the allocator waits for this stream's work before handing the block out).
struct GpuScratch {
  int device = 0;
  size_t bytes = 0;
  void* p = nullptr;
  explicit GpuScratch(size_t nbytes) : bytes(nbytes) {
    CUDA_CHECK(cudaGetDevice(&device));
    p = ::convnet::gpu::allocate(device, bytes);
  }
  ~GpuScratch() {
    if (p) ::convnet::gpu::deallocate(device, p, bytes);
  }
  GpuScratch(const GpuScratch&) = delete;
  GpuScratch& operator=(const GpuScratch&) = delete;
};

}  // namespace convnet::cuda
