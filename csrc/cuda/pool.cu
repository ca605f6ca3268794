// CUDA twins of the max-pool family.
//
// Forward: one thread per output element (ow fastest, so a warp's loads walk along W);
// it scans its window in row-major order with pool_better, as the CPU twin's value.
// Backward: one thread per input element, gathering (no atomics, deterministic): it
// visits the windows that cover it in row-major order and adds a window's dy when it is
// that window's first element equal to the window's output y. Testing "first" rescans the
// part of the window before the element, which happens only when the element equals y
// (about one window in size^2), so the usual cost is one load of x and of each covering y.
// The sum order matches the CPU twin's scatter, so both give the same bits.
//
// The flat index is split with 32-bit division when it fits (64-bit division would cost about
// as much as the memory traffic of the backward).
//
// ptxas -v (sm_90, CUDA 13.0, -O3), from CMAKE_ARGS=-DCONVNET_PTXAS_VERBOSE=ON tools/dev_build.sh;
// 0 bytes stack frame, 0 bytes spill stores/loads for all:
//   max_pool_kernel<uint32_t> 28 registers, <int64_t> 28
//   max_pool_backward_kernel<uint32_t> 34 registers, <int64_t> 40
// Not yet timed on a GPU.
#include "../kernels/pool.h"
#include "common.cuh"

namespace convnet::cuda {
namespace {

constexpr int kThreads = 256;

// Index: the type the flat element index is split in; uint32_t when it fits, as 64-bit division
// costs several times the 32-bit one and would otherwise rival the memory time.
template <class Index>
__global__ void __launch_bounds__(kThreads) max_pool_kernel(const PoolShape sh, const float* __restrict__ x,
                                                             float* __restrict__ y) {
  const Index total = (Index)(sh.n * sh.c * sh.p * sh.q), p = (Index)sh.p, q = (Index)sh.q;
  for (Index e = blockIdx.x * (Index)blockDim.x + threadIdx.x; e < total; e += (Index)gridDim.x * blockDim.x) {
    const Index ow = e % q, rest = e / q;
    const Index oh = rest % p, plane = rest / p;
    const float* w = x + (int64_t)plane * sh.h * sh.w + ((int64_t)oh * sh.w + ow) * sh.stride;
    float m = __ldg(w);
    for (int64_t kh = 0; kh < sh.size; ++kh) {
      for (int64_t kw = 0; kw < sh.size; ++kw) {
        const float v = __ldg(w + kh * sh.w + kw);
        m = pool_better(v, m) ? v : m;
      }
    }
    y[e] = m;
  }
}

template <class Index>
__global__ void __launch_bounds__(kThreads) max_pool_backward_kernel(const PoolShape sh, const float* __restrict__ x,
                                                                      const float* __restrict__ y,
                                                                      const float* __restrict__ dy,
                                                                      float* __restrict__ dx) {
  const Index total = (Index)(sh.n * sh.c * sh.h * sh.w), h = (Index)sh.h, w = (Index)sh.w;
  const int64_t size = sh.size, stride = sh.stride;
  for (Index e = blockIdx.x * (Index)blockDim.x + threadIdx.x; e < total; e += (Index)gridDim.x * blockDim.x) {
    const int64_t iw = e % w;
    const Index rest = e / w;
    const int64_t ih = rest % h, plane = rest / h;
    // windows oh with oh*stride <= ih <= oh*stride + size - 1, inside the output
    const int64_t oh_lo = ih >= size ? (ih - size) / stride + 1 : 0, oh_hi = min(ih / stride, sh.p - 1);
    const int64_t ow_lo = iw >= size ? (iw - size) / stride + 1 : 0, ow_hi = min(iw / stride, sh.q - 1);
    const float* xp = x + plane * sh.h * sh.w;
    const float* yp = y + plane * sh.p * sh.q;
    const float* dyp = dy + plane * sh.p * sh.q;
    const float v = __ldg(x + e);
    float acc = 0.f;
    for (int64_t oh = oh_lo; oh <= oh_hi; ++oh) {
      for (int64_t ow = ow_lo; ow <= ow_hi; ++ow) {
        const float m = __ldg(yp + oh * sh.q + ow);
        if (!pool_same(v, m)) continue;
        // first in the window? no earlier element (row-major) may equal m
        bool first = true;
        const int64_t r0 = oh * stride, c0 = ow * stride;
        for (int64_t r = r0; r <= ih && first; ++r) {
          const int64_t c_end = r < ih ? c0 + size : iw;  // columns before this element on its row
          for (int64_t c = c0; c < c_end; ++c) {
            if (pool_same(__ldg(xp + r * sh.w + c), m)) {
              first = false;
              break;
            }
          }
        }
        if (first) acc += __ldg(dyp + oh * sh.q + ow);
      }
    }
    dx[e] = acc;
  }
}

}  // namespace

// A grid-stride index stays below total + gridDim.x * blockDim.x; keep that inside uint32_t.
bool fits_32(int64_t total) { return total + (int64_t)65535 * 8 * kThreads < ((int64_t)1 << 32); }

void max_pool(const PoolShape& sh, const float* x, float* y) {
  const int64_t total = sh.n * sh.c * sh.p * sh.q;
  if (fits_32(total))
    max_pool_kernel<uint32_t><<<blocks_for(total, kThreads), kThreads, 0, stream()>>>(sh, x, y);
  else
    max_pool_kernel<int64_t><<<blocks_for(total, kThreads), kThreads, 0, stream()>>>(sh, x, y);
  CUDA_CHECK_LAUNCH("max_pool_kernel");
}

void max_pool_backward(const PoolShape& sh, const float* x, const float* y, const float* dy, float* dx) {
  const int64_t total = sh.n * sh.c * sh.h * sh.w;
  if (fits_32(total))
    max_pool_backward_kernel<uint32_t><<<blocks_for(total, kThreads), kThreads, 0, stream()>>>(sh, x, y, dy, dx);
  else
    max_pool_backward_kernel<int64_t><<<blocks_for(total, kThreads), kThreads, 0, stream()>>>(sh, x, y, dy, dx);
  CUDA_CHECK_LAUNCH("max_pool_backward_kernel");
}

}  // namespace convnet::cuda
