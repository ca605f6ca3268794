// CUDA twins of the elementwise family. Grid-stride loops, 256 threads a block,
// float4 loads where the pointer and length allow (memory-bound: the goal is copy bandwidth).
#include "../kernels/elementwise.h"
#include "common.cuh"

namespace convnet::cuda {
namespace {

__global__ void relu_kernel(const float* __restrict__ x, float* __restrict__ y, int64_t n) {
  int64_t n4 = n / 4;
  const float4* x4 = reinterpret_cast<const float4*>(x);
  float4* y4 = reinterpret_cast<float4*>(y);
  int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n4; i += stride) {
    float4 v = x4[i];
    v.x = fmaxf(v.x, 0.f); v.y = fmaxf(v.y, 0.f); v.z = fmaxf(v.z, 0.f); v.w = fmaxf(v.w, 0.f);
    y4[i] = v;
  }
  for (int64_t i = n4 * 4 + blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += stride)
    y[i] = fmaxf(x[i], 0.f);
}

__global__ void relu_backward_kernel(const float* __restrict__ y, const float* __restrict__ dy,
                                     float* __restrict__ dx, int64_t n) {
  int64_t n4 = n / 4;
  const float4* y4 = reinterpret_cast<const float4*>(y);
  const float4* dy4 = reinterpret_cast<const float4*>(dy);
  float4* dx4 = reinterpret_cast<float4*>(dx);
  int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n4; i += stride) {
    float4 a = y4[i], g = dy4[i], r;
    r.x = a.x > 0.f ? g.x : 0.f; r.y = a.y > 0.f ? g.y : 0.f;
    r.z = a.z > 0.f ? g.z : 0.f; r.w = a.w > 0.f ? g.w : 0.f;
    dx4[i] = r;
  }
  for (int64_t i = n4 * 4 + blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += stride)
    dx[i] = y[i] > 0.f ? dy[i] : 0.f;
}

}  // namespace

// Tensors are allocated 512-byte aligned by the caching allocator, so float4 is safe.
void relu(const float* x, float* y, int64_t n) {
  if (n == 0) return;
  relu_kernel<<<blocks_for(n / 4 + 1, 256), 256, 0, stream()>>>(x, y, n);
  CUDA_CHECK_LAUNCH("relu_kernel");
}

void relu_backward(const float* y, const float* dy, float* dx, int64_t n) {
  if (n == 0) return;
  relu_backward_kernel<<<blocks_for(n / 4 + 1, 256), 256, 0, stream()>>>(y, dy, dx, n);
  CUDA_CHECK_LAUNCH("relu_backward_kernel");
}

}  // namespace convnet::cuda
