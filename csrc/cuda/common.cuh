// Shared by every CUDA kernel file: error checking, the stream to launch on, fast division.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

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

// x / d and x % d for a divisor fixed at launch, by multiply-high and shift (Granlund and
// Montgomery): valid for every 0 <= x < 2^31 and 1 <= d < 2^31.
struct FastDiv {
  uint32_t d = 1, mul = 1, shift = 0;
  FastDiv() = default;
  explicit FastDiv(int64_t divisor) : d(divisor > 1 ? (uint32_t)divisor : 1u) {
    while ((uint64_t(1) << shift) < d) ++shift;
    mul = (uint32_t)(((uint64_t(1) << 32) * ((uint64_t(1) << shift) - d)) / d + 1);
  }
  __host__ __device__ __forceinline__ int div(int x) const {
#ifdef __CUDA_ARCH__
    uint32_t hi = __umulhi((uint32_t)x, mul);
#else
    uint32_t hi = (uint32_t)(((uint64_t)(uint32_t)x * mul) >> 32);
#endif
    return (int)((hi + (uint32_t)x) >> shift);
  }
  __host__ __device__ __forceinline__ int mod(int x, int q) const { return x - q * (int)d; }
};

}  // namespace convnet::cuda

#define CUDA_CHECK(call) ::convnet::cuda::check((call), #call, __FILE__, __LINE__)
// After every <<<...>>>: catches bad launch configurations at once.
#define CUDA_CHECK_LAUNCH(name) ::convnet::cuda::check(cudaGetLastError(), "launch of " name, __FILE__, __LINE__)
