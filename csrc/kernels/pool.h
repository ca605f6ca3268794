// Twin kernels of the max-pool family (csrc/cpu/pool.cpp, csrc/cuda/pool.cu).
// Dense NCHW float32, square window `size`, stride `stride`, no padding; output
// p = (h - size) / stride + 1, q = (w - size) / stride + 1 (a partial window is dropped).
// Kernels trust PoolShape: csrc/ops/pool.cpp has checked it.
#pragma once
#include <cstdint>

namespace convnet {
struct PoolShape {
  int64_t n, c, h, w;  // input
  int64_t size, stride;
  int64_t p, q;        // output height, width
};

#ifdef __CUDACC__
#define CONVNET_POOL_HD __host__ __device__ __forceinline__
#else
#define CONVNET_POOL_HD inline
#endif

// The window order both twins use: a value v replaces the running maximum m when it is
// larger, or NaN while m is not (so NaN propagates, the first NaN winning); ties keep m,
// so in row-major scanning the first maximal element wins.
CONVNET_POOL_HD bool pool_better(float v, float m) { return m == m && !(v <= m); }
// An element is a window's argmax when it is "the same" as the window's output y
// (NaN matching NaN), and no earlier element in row-major order is.
CONVNET_POOL_HD bool pool_same(float v, float y) { return v == y || (v != v && y != y); }
}  // namespace convnet

#define CONVNET_POOL_TWINS                                                                   \
  void max_pool(const PoolShape& sh, const float* x, float* y);                             \
  /* dx (overwritten): each window's dy goes to its first element equal to y (row-major) */ \
  void max_pool_backward(const PoolShape& sh, const float* x, const float* y, const float* dy, float* dx);

namespace convnet::cpu { CONVNET_POOL_TWINS }
namespace convnet::cuda { CONVNET_POOL_TWINS }
#undef CONVNET_POOL_TWINS
