// CUDA twins of the elementwise family. Grid-stride loops, 256 threads a block, each thread
// handling 4 consecutive elements per step with float4 (and uchar4 for masks) loads/stores,
// then a scalar tail for n % 4 (all of n for inputs off those alignments: vector_count).
// Memory-bound: the goal is copy bandwidth.
// Dropout draws element i's bits from random.h's counter hash of (seed, i), the same function
// the CPU twin calls, so masks are bit-identical across devices and launch shapes.
//
// ptxas -v (sm_90, CUDA 13, -O3), no spills anywhere, no shared memory:
//   relu_kernel 32 regs, relu_backward_kernel 34, dropout_kernel 32,
//   dropout_backward_kernel 32, sgd_update_kernel 40 (6 blocks of 256 per SM: 75% occupancy,
//   plenty for a streaming kernel with 3 float4 loads in flight per thread).
#include "../kernels/elementwise.h"
#include "../kernels/random.h"
#include "common.cuh"

namespace convnet::cuda {
namespace {

// Not fmaxf, which turns NaN into 0: a NaN must reach the loss so that bad weights show.
__device__ __forceinline__ float relu1(float v) { return v < 0.f ? 0.f : v; }

__global__ void relu_kernel(const float* __restrict__ x, float* __restrict__ y, int64_t n, int64_t n4) {
  const float4* x4 = reinterpret_cast<const float4*>(x);
  float4* y4 = reinterpret_cast<float4*>(y);
  int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n4; i += stride) {
    float4 v = x4[i];
    v.x = relu1(v.x); v.y = relu1(v.y); v.z = relu1(v.z); v.w = relu1(v.w);
    y4[i] = v;
  }
  for (int64_t i = n4 * 4 + blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += stride)
    y[i] = relu1(x[i]);
}

__global__ void relu_backward_kernel(const float* __restrict__ y, const float* __restrict__ dy,
                                     float* __restrict__ dx, int64_t n, int64_t n4) {
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


__global__ void dropout_kernel(const float* __restrict__ x, float* __restrict__ y,
                               uint8_t* __restrict__ mask, int64_t n, int64_t n4, uint64_t key,
                               uint32_t threshold, float scale) {
  const float4* x4 = reinterpret_cast<const float4*>(x);
  float4* y4 = reinterpret_cast<float4*>(y);
  uchar4* m4 = reinterpret_cast<uchar4*>(mask);
  int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n4; i += stride) {
    uint64_t e = (uint64_t)i * 4;
    uchar4 k;
    k.x = random::uniform24(key, e) >= threshold;
    k.y = random::uniform24(key, e + 1) >= threshold;
    k.z = random::uniform24(key, e + 2) >= threshold;
    k.w = random::uniform24(key, e + 3) >= threshold;
    float4 v = x4[i];
    v.x *= k.x * scale; v.y *= k.y * scale; v.z *= k.z * scale; v.w *= k.w * scale;
    y4[i] = v;
    m4[i] = k;
  }
  for (int64_t i = n4 * 4 + blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += stride) {
    uint8_t k = random::uniform24(key, (uint64_t)i) >= threshold;
    mask[i] = k;
    y[i] = x[i] * (k * scale);
  }
}

__global__ void dropout_backward_kernel(const float* __restrict__ dy, const uint8_t* __restrict__ mask,
                                        float* __restrict__ dx, int64_t n, int64_t n4, float scale) {
  const float4* dy4 = reinterpret_cast<const float4*>(dy);
  const uchar4* m4 = reinterpret_cast<const uchar4*>(mask);
  float4* dx4 = reinterpret_cast<float4*>(dx);
  int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n4; i += stride) {
    float4 g = dy4[i];
    uchar4 k = m4[i];
    g.x *= k.x * scale; g.y *= k.y * scale; g.z *= k.z * scale; g.w *= k.w * scale;
    dx4[i] = g;
  }
  for (int64_t i = n4 * 4 + blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += stride)
    dx[i] = dy[i] * (mask[i] * scale);
}

__device__ __forceinline__ void sgd_step(float& w, float dw, float& v, float lr, float momentum,
                                         float decay) {
  v = momentum * v - decay * w - lr * dw;
  w += v;
}

__global__ void sgd_update_kernel(float* __restrict__ w, const float* __restrict__ dw,
                                  float* __restrict__ v, int64_t n, int64_t n4, float lr, float momentum,
                                  float decay) {
  float4* w4 = reinterpret_cast<float4*>(w);
  const float4* dw4 = reinterpret_cast<const float4*>(dw);
  float4* v4 = reinterpret_cast<float4*>(v);
  int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n4; i += stride) {
    float4 a = w4[i], g = dw4[i], m = v4[i];
    sgd_step(a.x, g.x, m.x, lr, momentum, decay);
    sgd_step(a.y, g.y, m.y, lr, momentum, decay);
    sgd_step(a.z, g.z, m.z, lr, momentum, decay);
    sgd_step(a.w, g.w, m.w, lr, momentum, decay);
    w4[i] = a;
    v4[i] = m;
  }
  for (int64_t i = n4 * 4 + blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += stride)
    sgd_step(w[i], dw[i], v[i], lr, momentum, decay);
}

}  // namespace

// n / 4 when every pointer allows its vector type (16 bytes for float4, 4 for uchar4), else 0:
// the kernels then take their scalar loop for all n. Tensors from the caching allocator are
// 512-byte aligned, but one imported through DLPack may start anywhere (a slice of a larger
// buffer), and a misaligned float4 access is a sticky error that ends the CUDA context.
template <class... P>
int64_t vector_count(int64_t n, const uint8_t* mask, P... floats) {
  const bool ok = ((reinterpret_cast<uintptr_t>(floats) % 16 == 0) && ...) &&
                  reinterpret_cast<uintptr_t>(mask) % 4 == 0;
  return ok ? n / 4 : 0;
}

void relu(const float* x, float* y, int64_t n) {
  if (n == 0) return;
  relu_kernel<<<blocks_for(n / 4 + 1, 256), 256, 0, stream()>>>(x, y, n, vector_count(n, nullptr, x, y));
  CUDA_CHECK_LAUNCH("relu_kernel");
}

void relu_backward(const float* y, const float* dy, float* dx, int64_t n) {
  if (n == 0) return;
  relu_backward_kernel<<<blocks_for(n / 4 + 1, 256), 256, 0, stream()>>>(y, dy, dx, n,
                                                                       vector_count(n, nullptr, y, dy, dx));
  CUDA_CHECK_LAUNCH("relu_backward_kernel");
}

void dropout(const float* x, float* y, uint8_t* mask, int64_t n, double p, uint64_t seed) {
  if (n == 0) return;
  dropout_kernel<<<blocks_for(n / 4 + 1, 256), 256, 0, stream()>>>(
      x, y, mask, n, vector_count(n, mask, x, y), random::stream_key(seed), random::drop_threshold(p),
      (float)(1.0 / (1.0 - p)));
  CUDA_CHECK_LAUNCH("dropout_kernel");
}

void dropout_backward(const float* dy, const uint8_t* mask, float* dx, int64_t n, double p) {
  if (n == 0) return;
  dropout_backward_kernel<<<blocks_for(n / 4 + 1, 256), 256, 0, stream()>>>(
      dy, mask, dx, n, vector_count(n, mask, dy, dx), (float)(1.0 / (1.0 - p)));
  CUDA_CHECK_LAUNCH("dropout_backward_kernel");
}

void sgd_update(float* w, const float* dw, float* v, int64_t n, float lr, float momentum,
                float weight_decay) {
  if (n == 0) return;
  sgd_update_kernel<<<blocks_for(n / 4 + 1, 256), 256, 0, stream()>>>(w, dw, v, n, vector_count(n, nullptr, w, dw, v),
                                                                      lr, momentum, weight_decay * lr);
  CUDA_CHECK_LAUNCH("sgd_update_kernel");
}

}  // namespace convnet::cuda
